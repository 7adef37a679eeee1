"""Pieces of resumable uploads (tus at /uploads/, GraphQL's uploadChunk) that hold no business rules.

`locking` (the writer lock across processes), `hashing` (the running sha256 of each upload this
process receives), `events` (RECEIVING progress, coalesced), `checksums` (per-chunk checksums).
The writes are services: `backend.uploads.services.resumable` (create, concatenate, complete,
cancel, terminate, expire) and `backend.uploads.services.chunks` (one chunk appended to staging,
the same rules for every door). The protocol adapters (`backend/tus`, `schema/mutations.py`) call
those.
"""
