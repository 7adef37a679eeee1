"""Direct-to-bucket uploads: the client puts parts straight into the bucket (CONTRACT section 9).

`services` (create, sign, confirm, complete, cancel, expire: what the GraphQL mutations and the
Companion routes call), `finishing` (what the worker does once every part is in: complete the
object, check it, read it back). The protocol adapters are `schema/mutations.py` and
`backend/uploads/companion/`.
"""
