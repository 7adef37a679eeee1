"""The staging digest: hashed beside the parser, equal to hashing the bytes in one go."""

from __future__ import annotations

import hashlib
import os

import pytest

from backend.uploads.staging import Sha256Overlapped


@pytest.mark.parametrize("chunks", [0, 1, 2, 17])
def test_overlapped_digest_is_the_sha256_of_the_chunks_in_order(chunks: int) -> None:
    pieces = [os.urandom(64 * 1024 + n) for n in range(chunks)]
    digest = Sha256Overlapped()
    for piece in pieces:
        digest.update(piece)
    assert digest.hexdigest() == hashlib.sha256(b"".join(pieces)).hexdigest()


def test_overlapped_digest_can_be_closed_half_way_and_read_again() -> None:
    digest = Sha256Overlapped()
    digest.update(b"a" * 10_000)
    digest.update(b"b" * 10_000)
    digest.close()
    digest.close()
    assert digest.hexdigest() == digest.hexdigest() == hashlib.sha256(b"a" * 10_000 + b"b" * 10_000).hexdigest()
