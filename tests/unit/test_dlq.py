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


def test_a_dead_letter_carries_at_most_the_bounded_key_and_value_and_says_what_was_cut() -> None:
    small_key, small_value = b"u1", b"x" * dlq.MAX_LETTER_VALUE_BYTES
    assert dlq.bounded(small_key, small_value) == (small_key, small_value, [])
    assert dlq.bounded(None, None) == (None, None, [])
    big_key, big_value = b"k" * (dlq.MAX_LETTER_KEY_BYTES + 1), b"v" * 1_000_077
    key, value, cut = dlq.bounded(big_key, big_value)
    assert key == big_key[: dlq.MAX_LETTER_KEY_BYTES] and value == big_value[: dlq.MAX_LETTER_VALUE_BYTES]
    assert dict(cut) == {dlq.H_KEY_BYTES: str(len(big_key)).encode(), dlq.H_VALUE_BYTES: b"1000077"}
    # Under Faust's and librdkafka's 1,000,000-byte limit with every header a letter carries.
    assert dlq.MAX_LETTER_KEY_BYTES + dlq.MAX_LETTER_VALUE_BYTES + 8 * 1_200 < 1_000_000
