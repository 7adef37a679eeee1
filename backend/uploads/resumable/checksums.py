"""Per-chunk checksums a client may declare (tus `Upload-Checksum`): pure, no I/O."""

from __future__ import annotations

import base64
import binascii
import hashlib
import zlib
from dataclasses import dataclass, field
from typing import Protocol

# In the order the server prefers them (Tus-Checksum-Algorithm).
ALGORITHMS = ("sha1", "md5", "crc32", "sha256")


class ChecksumUnknown(ValueError):
    """The algorithm is not one this server computes, or the header is malformed."""


class _Digest(Protocol):
    def update(self, data: bytes, /) -> None: ...

    def digest(self) -> bytes: ...


class _Crc32:
    """zlib.crc32 behind hashlib's interface; the digest is the IEEE CRC-32, 4 bytes big-endian."""

    def __init__(self) -> None:
        self.value = 0

    def update(self, data: bytes, /) -> None:
        self.value = zlib.crc32(data, self.value)

    def digest(self) -> bytes:
        return self.value.to_bytes(4, "big")


def _digest_for(algorithm: str) -> _Digest:
    if algorithm == "crc32":
        return _Crc32()
    return hashlib.new(algorithm)


@dataclass
class ChunkChecksum:
    """The checksum a client declared for one chunk, and the running digest of the chunk's bytes."""

    algorithm: str
    expected: bytes
    _digest: _Digest = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self._digest = _digest_for(self.algorithm)

    def update(self, data: bytes) -> None:
        self._digest.update(data)

    def matches(self) -> bool:
        return self._digest.digest() == self.expected


def checksum_parse(header: str) -> ChunkChecksum:
    """`<algorithm> <base64 digest>` as a ChunkChecksum; ChecksumUnknown when unknown or malformed."""
    algorithm, _, encoded = header.strip().partition(" ")
    if algorithm not in ALGORITHMS:
        raise ChecksumUnknown(f"checksum algorithm {algorithm!r} is not supported; use one of {', '.join(ALGORITHMS)}")
    try:
        expected = base64.b64decode(encoded.strip(), validate=True)
    except (binascii.Error, ValueError) as exc:
        raise ChecksumUnknown("the checksum is not base64") from exc
    if not expected:
        raise ChecksumUnknown("the checksum is empty")
    return ChunkChecksum(algorithm=algorithm, expected=expected)
