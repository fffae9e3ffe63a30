"""The prequential harness in process and through the real broker agree; two workers converge on one's lists.

A MovieLens-100k subset (catalog, users, the first ratings) is replayed with the emit interval
at 0, so that every change is emitted:

- one worker, one partition: every recommendation message it emits (items, scores, reasons,
  profile version) equals the message the in-process harness (``stream_app.evaluate``, the
  same :class:`~stream_app.pipeline.Pipeline` over a dict store) emitted at the same point,
  so the figures computed from them agree exactly;
- two workers, two partitions: global scoring state reaches every worker through the
  ``scoring.deltas`` topic. While the replay runs, a worker ranks with the other's deltas
  a little behind, so lists differ in flight (the figures are printed side by side); once
  both replicas caught up, a probe event per user makes each worker rank again, and every
  probed user's list equals the one-worker and the in-process list.
"""

from __future__ import annotations

import math
import random
from collections.abc import Callable
from pathlib import Path

import pytest

from scoring.messages import Recommendations
from scoring.messages import decode as decode_recs
from scoring.shared import MARK_HEADER, decode_record, encode_mark
from state.events import Event, Item, Purchase, User
from stream_app.evaluate import evaluate
from stream_app.inspect import scan
from stream_app.producer import publish
from stream_app.settings import Settings
from stream_app.sources import read_events
from tests.support import WorkerProcess, free_port, metric_sum, wait_drained

pytestmark = [pytest.mark.integration, pytest.mark.slow]

RATINGS = 2500
PROBES = 120


def _subset(data_dir: Path) -> tuple[list[Event], list[Event], list[Event]]:
    events = list(read_events("movielens", data_dir / "movielens-100k"))
    items = [e for e in events if isinstance(e, Item)]
    ratings = [e for e in events if isinstance(e, Purchase)][:RATINGS]
    users = {e.user_id for e in ratings}
    people = [e for e in events if isinstance(e, User) and e.user_id in users]
    return items, people, ratings


def _probes(ratings: list[Event], value: str = "1") -> list[Event]:
    users = sorted({e.user_id for e in ratings if isinstance(e, Purchase)})
    last = max(e.ts for e in ratings)
    chosen = random.Random(5).sample(users, min(PROBES, len(users)))
    # An attribute no segment prior knows: the user's lists are ranked again, nothing else moves.
    return [User(event_id=f"probe{value}-{u}", ts=last, user_id=u, attributes={"probe": value}) for u in chosen]


def _messages(settings: Settings) -> list[Recommendations]:
    return [decode_recs(v) for k, v, *_ in scan(settings, settings.recommendations_topic) if k is not None and v is not None]


def _view(msg: Recommendations) -> tuple[object, ...]:
    return (msg.user_id, msg.profile_version, tuple((s.item_id, s.score, tuple(s.reasons)) for s in msg.items))


def _ndcg_last_emitted(messages: list[Recommendations], people: list[Event], ratings: list[Event], k: int = 10) -> tuple[float, int]:
    """NDCG@k of the list each user was last sent before each of their ratings after the
    first. The message answering a user's n-th event carries profile version n, so the list
    shown before an event that follows n earlier events is the message of version n."""
    by_version = {(m.user_id, m.profile_version): [s.item_id for s in m.items] for m in messages}
    events: dict[str, int] = {}
    for e in people:
        events[e.user_id] = events.get(e.user_id, 0) + 1  # type: ignore[union-attr]
    rated: set[str] = set()
    total, n = 0.0, 0
    for e in ratings:
        assert isinstance(e, Purchase)
        before = events.get(e.user_id, 0)
        events[e.user_id] = before + 1
        if e.user_id not in rated:
            rated.add(e.user_id)
            continue
        ranked = by_version.get((e.user_id, before), [])[:k]
        n += 1
        if e.item_id in ranked:
            total += 1.0 / math.log2(ranked.index(e.item_id) + 2)
    return (total / n if n else 0.0), n


def _run_workers(
    settings: Settings, worker_factory: Callable[..., WorkerProcess], workers: int, events: tuple[list[Event], ...]
) -> list[Recommendations]:
    items, people, ratings = events
    publish(settings, items)
    procs = [
        worker_factory(settings, state_dir=settings.state_dir / f"w{n}", web_port=free_port()) if n else worker_factory(settings)
        for n in range(workers)
    ]
    for w in procs:
        w.wait_ready()
    inputs = [settings.topic("user"), settings.topic("purchase")]
    # Users first, so that every worker applies the ratings in the order the harness does.
    publish(settings, people)
    wait_drained(settings, inputs, procs)
    publish(settings, ratings)
    wait_drained(settings, inputs, procs)
    # Every worker read every delta (its own come back as "known").
    for w in procs:
        w.wait_until(lambda m: metric_sum(m, "persona_shared_deltas_total") >= len(ratings), timeout=120)
    publish(settings, _probes(ratings))
    wait_drained(settings, inputs, procs)
    for w in procs:
        assert w.stop() == 0
    return _messages(settings)


def _ndcg_partitions_alone(settings: Settings, events: tuple[list[Event], ...]) -> float:
    """Last-emitted NDCG@10 when each partition's worker never sees the other's deltas: the
    harness run on the catalog and one partition's users and ratings, for each partition
    (where each user's records landed is read back from the topic)."""
    items, people, ratings = events
    home = {k.decode(): p for k, _, _, p, _ in scan(settings, settings.topic("purchase")) if k is not None}
    messages: list[Recommendations] = []
    for partition in sorted(set(home.values())):
        mine = [e for e in [*people, *ratings] if home[e.user_id] == partition]  # type: ignore[union-attr]
        evaluate(
            [*items, *mine], settings, emit_interval_s=0.0, variants=("all",), encoder=None,
            on_message=lambda key, value: messages.append(decode_recs(value)),
        )
    return _ndcg_last_emitted(messages, people, ratings)[0]


def test_broker_replay_equals_in_process_harness_and_two_workers_converge(
    topic_factory: Callable[..., Settings], worker_factory: Callable[..., WorkerProcess], data_dir: Path
) -> None:
    subset = _subset(data_dir)
    items, people, ratings = subset
    one = topic_factory(partitions=1, emit_interval_s=0.0)

    # In process: the same events in the same order, then the probes.
    expected: list[Recommendations] = []
    report = evaluate(
        [*items, *people, *ratings, *_probes(ratings), *_probes(ratings, "2")],
        one,
        emit_interval_s=0.0,
        variants=("all", "popularity", "item_knn"),
        encoder=None,
        on_message=lambda key, value: expected.append(decode_recs(value)),
    )
    assert report.evaluated > 1000

    got = _run_workers(one, worker_factory, 1, subset)
    # Every deltas record went through the broker with its mark (what lets a worker skip its
    # own deltas undecoded): the count and highest (offset, index) of the deltas it holds.
    records = list(scan(one, one.scoring_deltas_topic))
    assert records
    for _, value, headers, _, _ in records:
        assert value is not None
        deltas = decode_record(value)
        assert dict(headers).get(MARK_HEADER) == encode_mark(len(deltas), *max((d.offset, d.index) for d in deltas))
    after_restart = expected[len(got):]
    expected = expected[: len(got)]
    assert len(got) == len(expected) == len(people) + len(ratings) + len(_probes(ratings))
    mismatches = [(g.user_id, g.profile_version) for g, e in zip(got, expected, strict=True) if _view(g) != _view(e)]
    assert not mismatches, f"{len(mismatches)} messages differ, first {mismatches[:5]}"
    ndcg_broker, n = _ndcg_last_emitted(got, people, ratings)
    ndcg_harness, _ = _ndcg_last_emitted(expected, people, ratings)
    assert n > 1000 and ndcg_broker == ndcg_harness

    # Restarted, the worker rebuilds the shared state from the deltas topic: probed again, its
    # lists are the harness's (same profiles from RocksDB, same popularity and co-occurrence).
    again = worker_factory(one)
    again.wait_ready()
    again.wait_until(lambda m: metric_sum(m, "persona_shared_deltas_total") >= len(ratings), timeout=120)
    publish(one, _probes(ratings, "2"))
    wait_drained(one, [one.topic("user")], [again])
    assert again.stop() == 0
    restarted = _messages(one)[len(got):]
    assert [_view(m) for m in restarted] == [_view(m) for m in after_restart]

    two = topic_factory(partitions=2, emit_interval_s=0.0)
    both = _run_workers(two, worker_factory, 2, subset)
    ndcg_two, _ = _ndcg_last_emitted(both, people, ratings)
    ndcg_alone = _ndcg_partitions_alone(two, subset)
    print(
        f"last-emitted NDCG@10: harness {ndcg_harness:.4f}, one worker {ndcg_broker:.4f}, "
        f"two workers {ndcg_two:.4f}, each partition alone {ndcg_alone:.4f}"
    )
    # In flight, a worker ranks with the other's deltas some time behind. How far behind is
    # timing (it was 0.0461 against 0.0379 in one CI run, 0.0305 when never shared), so the
    # figure is held to the worst lag there is: workers that never see each other's deltas
    # rank as the harness does on each partition's events alone. Foreign deltas that arrived
    # in flight are information the lists used, so they must score above it (a floor expected
    # of any timing, not a theorem: partial information could in principle rank worse).
    assert ndcg_alone < ndcg_broker  # sharing matters on this data, or the bound says nothing
    assert ndcg_two > ndcg_alone
    # Converged: every probed user's list is the one-worker list (scores to float rounding).
    final_one = {m.user_id: m for m in expected[-len(_probes(ratings)):]}
    final_two = {m.user_id: m for m in both if m.user_id in final_one}  # the last message per user: the probe's
    assert set(final_two) == set(final_one)
    assert all(final_two[u].profile_version == m.profile_version for u, m in final_one.items())
    for user, want in final_one.items():
        have = final_two[user]
        assert [s.item_id for s in have.items] == [s.item_id for s in want.items], user
        assert all(math.isclose(a.score, b.score, abs_tol=2e-6) for a, b in zip(have.items, want.items, strict=True)), user
