"""Resumable uploads: an upload received in chunks (tus at /uploads/, GraphQL's uploadChunk).

`services` (create, concatenate, complete, cancel, terminate, expire), `appending` (one chunk
appended to staging, the same rules for every door), `locking` (the writer lock across
processes), `hashing` (the running sha256), `events` (RECEIVING progress), `checksums` (per-chunk
checksums). The protocol adapters (`backend/tus`, `schema/mutations.py`) call these.
"""
