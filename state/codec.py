"""Compact, versioned profile serialization.

MessagePack, not JSON: floats travel as 8 raw bytes instead of ~18 characters that must
be printed and parsed, which was the main cost of a JSON profile in a trial. The first
byte is the schema version so a later release can migrate old records on read.
"""

from __future__ import annotations

from typing import Final

import msgspec

from state.errors import StateError
from state.profile import Profile

SCHEMA_VERSION: Final[int] = 1

_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Profile)


class SchemaVersionError(StateError):
    """A stored profile was written by a newer (unknown) schema."""


def dumps(profile: Profile) -> bytes:
    return bytes((SCHEMA_VERSION,)) + _encoder.encode(profile)


def loads(data: bytes) -> Profile:
    if not data:
        raise StateError("empty profile record")
    version = data[0]
    if version != SCHEMA_VERSION:
        # Version 1 is the first schema: there is nothing older to migrate from yet.
        raise SchemaVersionError(f"profile schema {version}, this build reads {SCHEMA_VERSION}")
    return _decoder.decode(data[1:])
