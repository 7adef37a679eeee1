"""A command-line client for the upload service: `python -m backend.client --help`.

It speaks only the public API (CONTRACT sections 2-5) with gql and draws bars with rich; it
imports nothing from Django or the server, so it works against any deployment.

Modules: `cli` (arguments, URL and token, exit statuses), `commands` (one function per
COMMAND), `uploading` (the upload command: send, follow, Ctrl-C), `api` (GraphQL over HTTP and
graphql-transport-ws), `display` (bars, lines, tables, JSON), `files` (hashing, verified download).
"""
