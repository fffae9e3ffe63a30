"""The output contract: one message per user on the recommendations topic."""

from __future__ import annotations

import msgspec

from scoring.baseline import Scored


class Recommendations(msgspec.Struct, frozen=True, kw_only=True):
    user_id: str
    items: list[Scored]
    #: The profile version the scores were computed from; later versions supersede.
    profile_version: int
    #: Wall-clock time the message was computed (seconds since the epoch).
    generated_at: float
    #: Event time of the latest event folded into the profile that triggered it.
    trigger_event_ts: float
    model: str = "baseline-v1"


_encoder = msgspec.json.Encoder()
_decoder = msgspec.json.Decoder(Recommendations)


def encode(message: Recommendations) -> bytes:
    return _encoder.encode(message)


def decode(data: bytes) -> Recommendations:
    return _decoder.decode(data)
