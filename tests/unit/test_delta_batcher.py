"""Scoring deltas sent in batches (stream_app.shared_replica.DeltaBatcher): what readers get
back, per source and in order, in records of bounded size; old single-delta records still read;
a record's mark (its count and highest delta) lets a reader skip it undecoded exactly when
decoding it would have found every delta applied."""

from __future__ import annotations

import random

import msgspec
import pytest

from scoring.shared import (
    ENGAGE,
    MARK_HEADER,
    Delta,
    decode_delta,
    decode_record,
    encode_batch,
    encode_delta,
    encode_mark,
)
from state.catalog import Catalog
from stream_app import shared_replica
from stream_app.metrics import SHARED_DELTAS
from stream_app.pipeline import Pipeline
from stream_app.settings import Settings
from stream_app.shared_replica import DeltaBatcher, SharedReplica
from tests.unit.test_pipeline import DictStore, FakeVectors
from tests.unit.test_shared_snapshot import _deltas, _fresh, _reads

Record = tuple[bytes, bytes, list[tuple[str, bytes]]]


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
    batcher = DeltaBatcher(lambda k, v, h: sent.append((k, v)), max_deltas=3)
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
    batcher = DeltaBatcher(lambda k, v, h: sent.append(v), max_deltas=10_000, max_bytes=cap)
    made = [_delta("a:0", k, recent=20) for k in range(100)]  # ~200 bytes each
    for d in made:
        batcher.add(d)
    batcher.flush()
    assert len(sent) > 1
    assert all(len(v) <= cap + 5 for v in sent)  # + the array header
    assert [d for v in sent for d in decode_record(v)] == made


def test_max_deltas_one_writes_what_workers_before_batches_read() -> None:
    sent: list[bytes] = []
    batcher = DeltaBatcher(lambda k, v, h: sent.append(v), max_deltas=1)
    made = [_delta("a:0", k) for k in range(3)]
    for d in made:
        batcher.add(d)
    assert batcher.pending == 0
    assert [decode_delta(v) for v in sent] == made
    with pytest.raises(msgspec.ValidationError):
        decode_delta(encode_batch([encode_delta(d) for d in made]))  # why 1 is the upgrade setting


def _batched(deltas: list[Delta], max_deltas: int = 4) -> list[Record]:
    sent: list[Record] = []
    batcher = DeltaBatcher(lambda k, v, h: sent.append((k, v, h)), max_deltas=max_deltas)
    for d in deltas:
        batcher.add(d)
    batcher.flush()
    return sent


def _split(deltas: list[Delta], seed: int) -> list[Delta]:
    """The deltas with some records made batch records: a run of one source's deltas becomes
    events 0..n-1 of one offset, as a worker makes them from a batch record."""
    rng = random.Random(seed)
    out: list[Delta] = []
    for d in deltas:
        n = rng.choice([1, 1, 3])
        out.extend(msgspec.structs.replace(d, offset=d.offset, index=i, of=n) for i in range(n))
    return out


def test_each_record_is_marked_with_its_count_and_highest_delta() -> None:
    deltas = _split(_deltas(200, seed=3), seed=4)
    records = _batched(deltas)
    assert sum(len(decode_record(v)) for _, v, _ in records) == len(deltas)
    for key, value, headers in records:
        got = decode_record(value)
        assert {d.source.encode() for d in got} == {key}
        top = max((d.offset, d.index) for d in got)
        assert headers == [(MARK_HEADER, f"{len(got)}:{top[0]}:{top[1]}".encode())]


@pytest.mark.parametrize("seed", range(6))
def test_a_marked_record_is_skipped_only_when_every_delta_in_it_was_applied(seed: int) -> None:
    """A reader that applied a prefix of each source's deltas (what the owner made so far,
    cut anywhere, inside a batch record too) meets every record: where the mark says
    "covered", decoding finds every delta applied, and nowhere else; skipping then leaves
    the state, its counters included, as decoding every record does."""
    rng = random.Random(seed)
    deltas = _split(_deltas(150, seed=seed), seed=seed + 100)
    records = _batched(deltas, max_deltas=rng.choice([1, 3, 8]))
    skipping, decoding = _fresh(), _fresh()
    # how many of each source's deltas both readers applied before meeting the records
    cut = {f"t.events:{p}": rng.randrange(len(deltas) // 3) for p in range(3)}
    for state in (skipping, decoding):
        made = {source: 0 for source in cut}
        for d in deltas:
            if made[d.source] < cut[d.source]:
                state.apply(d)
                made[d.source] += 1
    covered_records = 0
    for key, value, headers in records:
        got = decode_record(value)
        every_applied = all(skipping.seen(d) for d in got)
        covered = skipping.covered(key.decode(), headers[0][1])
        assert (covered is not None) == every_applied
        if covered is None:
            for d in got:
                skipping.apply(d)
        else:
            assert covered == len(got)
            covered_records += 1
        for d in got:
            decoding.apply(d)
    assert 0 < covered_records < len(records)  # both branches were taken
    assert (skipping.applied, skipping.skipped) == (decoding.applied, decoding.skipped)
    assert _reads(skipping) == _reads(decoding)
    assert skipping.snapshot() == decoding.snapshot()


@pytest.mark.parametrize("mark", [b"", b"3:7", b"x:1:0", b"0:5:0", b"2:5:0:1"])
def test_an_unreadable_or_empty_mark_means_decode(mark: bytes) -> None:
    state = _fresh()
    for d in _deltas(20, seed=1):
        state.apply(d)
    assert state.covered("t.events:0", mark) is None
    assert state.covered("t.events:0", encode_mark(2, 3, 0)) == 2  # offset 3 of source 0: applied


def count_decodes(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """The deltas in each record the shared replica decodes from now on, in order."""
    decoded: list[int] = []

    def counting(data: bytes) -> list[Delta]:
        got = decode_record(data)
        decoded.append(len(got))
        return got

    monkeypatch.setattr(shared_replica, "decode_record", counting)
    return decoded


def test_a_worker_skips_its_own_deltas_undecoded(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = Settings()
    pipe = Pipeline.from_settings(settings, store=DictStore(), catalog=Catalog(), vectors=FakeVectors(), emit=lambda k, v: None)
    replica = SharedReplica(settings, settings.scoring_deltas_topic, settings.partitions, pipe)
    decoded = count_decodes(monkeypatch)
    deltas = [d for d in _deltas(60, seed=2) if d.source == "t.events:1"]
    own, theirs = deltas[:10], deltas[10:]
    for d in own:  # what the worker applied as it made them
        assert pipe.shared.apply(d)
    known = SHARED_DELTAS.labels("known")._value.get()
    for key, _, headers in _batched(own):
        assert replica.skip(key, headers)
    assert decoded == []
    assert SHARED_DELTAS.labels("known")._value.get() == known + len(own)
    assert pipe.shared.skipped == len(own)
    # Another worker's later deltas of the same source (the partition moved): decoded, applied.
    applied = pipe.shared.applied
    for key, value, headers in _batched(theirs):
        assert not replica.skip(key, headers)
        replica.apply(1, key, value, None)
    assert sum(decoded) == len(theirs)
    assert pipe.shared.applied == applied + len(theirs)
    # A record without the mark (workers before it) is decoded, and found applied.
    assert not replica.skip(own[0].source.encode(), [])
    replica.apply(1, own[0].source.encode(), encode_delta(own[0]), None)
    assert sum(decoded) == len(theirs) + 1 and pipe.shared.skipped == len(own) + 1
