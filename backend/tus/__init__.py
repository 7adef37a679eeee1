"""The tus 1.0.0 protocol at /uploads/: a thin ASGI adapter onto `backend.uploads.resumable`.

It is an ASGI application of its own, in front of Django, because Django's ASGI handler reads
the whole request body before any view runs: a PATCH body must reach staging as it arrives.
"""
