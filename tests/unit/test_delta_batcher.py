"""Scoring deltas sent in batches (stream_app.shared_replica.DeltaBatcher): what readers get
back, per source and in order, in records of bounded size; old single-delta records still read."""

from __future__ import annotations

import msgspec
import pytest

from scoring.shared import ENGAGE, Delta, decode_delta, decode_record, encode_batch, encode_delta
from stream_app.shared_replica import DeltaBatcher


def _delta(source: str, offset: int, recent: int = 0) -> Delta:
    return Delta(source=source, offset=offset, kind=ENGAGE, user=f"u{offset}", ts=float(offset), item=f"i{offset}",
                 weight=1.0, first=True, recent=[f"r{k}" for k in range(recent)])


@pytest.mark.parametrize("n", [0, 1, 15, 16, 300, 70_000])
def test_a_batch_record_decodes_to_its_deltas_in_order(n: int) -> None:
    deltas = [_delta("t:0", k) for k in range(n)]
    assert decode_record(encode_batch([encode_delta(d) for d in deltas])) == deltas


def test_a_single_delta_record_of_older_workers_still_reads() -> None:
    d = _delta("t:3", 9)
    assert decode_record(encode_delta(d)) == [d]


def test_records_are_per_source_in_offset_order_and_full_batches_go_at_once() -> None:
    sent: list[tuple[bytes, bytes]] = []
    batcher = DeltaBatcher(lambda k, v: sent.append((k, v)), max_deltas=3)
    made = [_delta("a:0" if k % 3 else "b:1", k) for k in range(10)]
    for d in made:
        batcher.add(d)
    # a:0 holds offsets 1,2,4,5,7,8 -> two full batches sent; b:1 holds 0,3,6,9 -> one full batch
    assert [(k, [d.offset for d in decode_record(v)]) for k, v in sent] == [
        (b"a:0", [1, 2, 4]), (b"b:1", [0, 3, 6]), (b"a:0", [5, 7, 8])]
    assert batcher.pending == 1
    assert batcher.flush() == 1 and batcher.pending == 0
    # the last record is a batch of one: written as a single delta, what old readers read
    assert sent[-1][0] == b"b:1" and decode_delta(sent[-1][1]) == made[9]
    got = {k: [d.offset for v in [v for kk, v in sent if kk == k] for d in decode_record(v)] for k, _ in sent}
    assert got == {b"a:0": [1, 2, 4, 5, 7, 8], b"b:1": [0, 3, 6, 9]}
    assert batcher.flush() == 0 and len(sent) == 4


def test_a_record_never_grows_past_the_byte_cap() -> None:
    sent: list[bytes] = []
    cap = 4_000
    batcher = DeltaBatcher(lambda k, v: sent.append(v), max_deltas=10_000, max_bytes=cap)
    made = [_delta("a:0", k, recent=20) for k in range(100)]  # ~200 bytes each
    for d in made:
        batcher.add(d)
    batcher.flush()
    assert len(sent) > 1
    assert all(len(v) <= cap + 5 for v in sent)  # + the array header
    assert [d for v in sent for d in decode_record(v)] == made


def test_max_deltas_one_writes_what_workers_before_batches_read() -> None:
    sent: list[bytes] = []
    batcher = DeltaBatcher(lambda k, v: sent.append(v), max_deltas=1)
    made = [_delta("a:0", k) for k in range(3)]
    for d in made:
        batcher.add(d)
    assert batcher.pending == 0
    assert [decode_delta(v) for v in sent] == made
    with pytest.raises(msgspec.ValidationError):
        decode_delta(encode_batch([encode_delta(d) for d in made]))  # why 1 is the upgrade setting
