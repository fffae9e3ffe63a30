"""Dead-letter headers: where the record came from and why it was rejected."""

from __future__ import annotations

from typing import get_args

import pytest

from state.errors import DEAD_LETTER_REASONS, DeadLetterReason
from state.events import DeadLetter, decode
from stream_app import dlq


def as_dict(headers: list[tuple[str, bytes]]) -> dict[str, bytes]:
    names = [name for name, _ in headers]
    assert len(names) == len(set(names)), names
    return dict(headers)


def test_headers_content() -> None:
    letter = decode("click", b"u-1", b"{not json")
    assert isinstance(letter, DeadLetter)
    h = as_dict(dlq.headers(letter, topic="persona.clicks", partition=3, offset=12345, timestamp_ms=1_700_000_000_123))
    assert h == {
        "persona.source.topic": b"persona.clicks",
        "persona.source.partition": b"3",
        "persona.source.offset": b"12345",
        "persona.source.timestamp": b"1700000000123",
        "persona.error.reason": b"bad_json",
        "persona.error.class": b"DecodeError",
        "persona.error.message": letter.message.encode(),
    }
    assert all(isinstance(v, bytes) for v in h.values())


def test_missing_timestamp_is_minus_one() -> None:
    letter = DeadLetter(reason="null_value", error="DecodeError", message="tombstone")
    h = as_dict(dlq.headers(letter, topic="x", partition=0, offset=0, timestamp_ms=None))
    assert h[dlq.H_TIMESTAMP] == b"-1"
    assert h[dlq.H_OFFSET] == b"0" and h[dlq.H_PARTITION] == b"0"


def test_zero_timestamp_is_kept() -> None:
    letter = DeadLetter(reason="null_value", error="DecodeError", message="m")
    assert as_dict(dlq.headers(letter, topic="x", partition=0, offset=0, timestamp_ms=0))[dlq.H_TIMESTAMP] == b"0"


@pytest.mark.parametrize("reason", DEAD_LETTER_REASONS)
def test_every_reason_travels(reason: DeadLetterReason) -> None:
    letter = DeadLetter(reason=reason, error="ContractError", message="m")
    h = as_dict(dlq.headers(letter, topic="t", partition=1, offset=2, timestamp_ms=3))
    assert h[dlq.H_REASON].decode() == reason
    assert h[dlq.H_CLASS] == b"ContractError"


def test_reason_list_matches_the_literal() -> None:
    assert set(DEAD_LETTER_REASONS) == set(get_args(DeadLetterReason))


def test_long_message_is_bounded_and_non_ascii_survives() -> None:
    message = "é" * 5_000
    letter = DeadLetter(reason="schema", error="ContractError", message=message)
    h = as_dict(dlq.headers(letter, topic="t", partition=0, offset=0, timestamp_ms=None))
    assert h[dlq.H_MESSAGE].decode("utf-8") == "é" * 1000
    short = DeadLetter(reason="schema", error="ContractError", message="Zoë: bad ts")
    assert as_dict(dlq.headers(short, topic="t", partition=0, offset=0, timestamp_ms=None))[dlq.H_MESSAGE] == (
        "Zoë: bad ts".encode()
    )


def test_unencodable_message_does_not_raise() -> None:
    letter = DeadLetter(reason="schema", error="ContractError", message="a\udcffb")
    h = as_dict(dlq.headers(letter, topic="t", partition=0, offset=0, timestamp_ms=None))
    assert h[dlq.H_MESSAGE] == b"a?b"


def test_dlq_topic_name() -> None:
    assert dlq.dlq_topic("persona.clicks") == "persona.clicks.dlq"
