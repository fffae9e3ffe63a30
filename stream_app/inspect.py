"""Reading Persona's topics from outside the worker (operators and tests).

Profiles are read from the profile table's changelog topic, not from a worker: it is
the durable copy every worker restores from, it needs no running worker, and it works
whichever worker owns the user's partition. The cost is a scan of the compacted
changelog, fine for an operator command.
"""

from __future__ import annotations

import time
import zlib
from collections.abc import Callable, Collection, Iterator, Mapping
from dataclasses import dataclass, replace
from datetime import datetime, timezone

import msgspec
from confluent_kafka import OFFSET_BEGINNING, TIMESTAMP_NOT_AVAILABLE, Consumer, TopicPartition
from rich.console import Console
from rich.table import Table

from scoring.messages import Recommendations
from scoring.messages import decode as decode_recommendations
from state.batch import is_batch
from state.codec import loads
from state.events import EVENT_KINDS, DeadLetter, Item, decode
from state.profile import Profile
from stream_app.kafka_clients import preflight, watermarks
from stream_app.records import events_of
from stream_app.settings import Settings


def changelog_topic(settings: Settings, table: str = "profiles") -> str:
    return f"{settings.app_id}-{table}-changelog"


def scan(
    settings: Settings, topic: str, *, idle_s: float = 3.0, stop: Callable[[int], bool] | None = None
) -> Iterator[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int, int]]:
    """Yield ``(key, value, headers, partition, offset)`` of every record, then stop once
    all partitions reached their end offsets (or nothing arrived for ``idle_s``)."""
    for key, value, headers, partition, offset, _ in scan_timed(settings, topic, idle_s=idle_s, stop=stop):
        yield key, value, headers, partition, offset


def scan_timed(
    settings: Settings, topic: str, *, idle_s: float = 3.0, stop: Callable[[int], bool] | None = None
) -> Iterator[tuple[bytes | None, bytes | None, list[tuple[str, bytes]], int, int, float | None]]:
    """:func:`scan`, each record with its Kafka timestamp in seconds (None when it has none)."""
    preflight(settings)  # a refused login fails here at once, not after a 10 s metadata timeout
    conf = settings.kafka_config()
    conf.update({"group.id": f"persona-inspect-{time.time_ns()}", "enable.auto.commit": False})
    consumer = Consumer(conf)
    try:
        meta = consumer.list_topics(topic, timeout=10)
        if topic not in meta.topics or meta.topics[topic].error is not None:
            return
        parts = sorted(meta.topics[topic].partitions)
        ends = {p: watermarks(consumer, TopicPartition(topic, p), 10)[1] for p in parts}
        todo = {p for p, end in ends.items() if end > 0}
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
        n = 0
        last = time.monotonic()
        while todo and time.monotonic() - last < idle_s:
            for msg in consumer.consume(num_messages=1000, timeout=0.5):
                if msg.error() is not None:
                    continue
                last = time.monotonic()
                p, off = msg.partition() or 0, msg.offset() or 0
                if off + 1 >= ends.get(p, 0):
                    todo.discard(p)
                if off >= ends.get(p, 0):
                    continue
                headers = [(str(h[0]), _as_bytes(h[1])) for h in (msg.headers() or [])]
                kind_ts, ms = msg.timestamp()
                yield msg.key(), msg.value(), headers, p, off, (ms / 1000.0 if kind_ts != TIMESTAMP_NOT_AVAILABLE and ms > 0 else None)
                n += 1
                if stop is not None and stop(n):
                    return
    finally:
        consumer.close()


def _as_bytes(v: str | bytes | None) -> bytes:
    return v.encode() if isinstance(v, str) else (v or b"")


def latest_profile(settings: Settings, user_id: str) -> Profile | None:
    wanted = user_id.encode()
    latest: bytes | None = None
    for key, value, _, _, _ in scan(settings, changelog_topic(settings)):
        if key == wanted:
            latest = value
    return loads(latest) if latest else None


def all_profiles(settings: Settings) -> dict[str, Profile]:
    """The latest profile per user in the changelog (tests and benchmarks)."""
    raw: dict[bytes, bytes | None] = {}
    for key, value, _, _, _ in scan(settings, changelog_topic(settings)):
        if key is not None:
            raw[key] = value
    return {k.decode(): loads(v) for k, v in raw.items() if v}


def _describe(
    settings: Settings, topic: str, key: bytes | None, value: bytes | None, headers: list[tuple[str, bytes]], ts: float | None
) -> str:
    if topic.endswith(".dlq"):
        h = {k: v.decode("utf-8", "replace") for k, v in headers}
        return f"DLQ key={key!r} headers={h} value={(value or b'')[:120]!r}"
    if topic == settings.recommendations_topic:
        if value is None:
            return f"{(key or b'').decode('utf-8', 'replace')} TOMBSTONE (erased)"
        return value.decode("utf-8", "replace")
    if topic == changelog_topic(settings):
        if value is None:
            return f"{(key or b'').decode('utf-8', 'replace')} TOMBSTONE (erased)"
        return f"{(key or b'').decode()} {loads(value)}"
    for kind in EVENT_KINDS:
        if topic == settings.topic(kind):
            results = events_of(settings, kind, key, value, ts)
            shown = [f"INVALID {r.reason}: {r.message}" if isinstance(r, DeadLetter) else repr(r) for r in results]
            return shown[0] if len(shown) == 1 and not is_batch(value) else f"BATCH of {len(shown)}: " + "; ".join(shown)
    return f"key={key!r} value={value!r}"


def tail_topic(settings: Settings, topic: str, *, max_records: int, idle_s: float) -> Iterator[str]:
    for key, value, headers, p, off, ts in scan_timed(settings, topic, idle_s=idle_s, stop=lambda n: n >= max_records):
        yield f"[{p}@{off}] {_describe(settings, topic, key, value, headers, ts)}"


def render_profile(profile: Profile, settings: Settings, console: Console) -> None:
    params = settings.params()
    head = Table(title=f"profile {profile.user_id} (version {profile.version})", show_header=False)
    head.add_row("events", ", ".join(f"{k}={v}" for k, v in sorted(profile.counts.items())))
    head.add_row("event time", f"{profile.first_event_ts} .. {profile.last_event_ts}")
    head.add_row("purchase value", f"{profile.purchase_value:.2f}")
    head.add_row("purchased items", str(len(profile.purchased)))
    if profile.rating_count:
        head.add_row("mean rating", f"{profile.rating_sum / profile.rating_count:.2f}")
    head.add_row("attributes", ", ".join(f"{k}={v}" for k, v in sorted(profile.attributes.items())))
    head.add_row("following", str(len(profile.following)))
    head.add_row("applied watermarks", ", ".join(f"{k}@{v}" for k, v in sorted(profile.applied.items())))
    console.print(head)
    aff = Table(title=f"category affinity at {profile.last_event_ts} (half-life {params.half_life_days} d)")
    aff.add_column("category")
    aff.add_column("affinity", justify="right")
    for cat, val in sorted(profile.affinity_at(profile.last_event_ts, params).items(), key=lambda kv: -kv[1])[:15]:
        aff.add_row(cat, f"{val:.4f}")
    console.print(aff)


# --- recommendations: the final message per user ------------------------------------------


@dataclass(frozen=True)
class FinalRecommendations:
    """A user's final message on the recommendations topic, and how many were emitted."""

    message: Recommendations
    #: Messages seen for this user (the worker coalesces, so fewer than the user's events).
    emitted: int
    partition: int
    offset: int


def latest_recommendations(
    settings: Settings, users: Collection[str] | None = None, *, idle_s: float = 3.0
) -> dict[str, FinalRecommendations]:
    """The final recommendation message of every (or every listed) user: the one with the
    highest profile version ("later versions supersede"), the later record among equals (a
    re-emission after a restart). Records that do not decode are skipped."""
    wanted = None if users is None else {u.encode() for u in users}
    out: dict[str, FinalRecommendations] = {}
    for key, value, _, p, off in scan(settings, settings.recommendations_topic, idle_s=idle_s):
        if key is None or value is None or (wanted is not None and key not in wanted):
            continue
        try:
            msg = decode_recommendations(value)
        except msgspec.DecodeError:
            continue
        user = key.decode("utf-8", "replace")
        prev = out.get(user)
        emitted = prev.emitted + 1 if prev is not None else 1
        if prev is None or msg.profile_version >= prev.message.profile_version:
            out[user] = FinalRecommendations(message=msg, emitted=emitted, partition=p, offset=off)
        else:
            out[user] = replace(prev, emitted=emitted)
    return out


def catalog_titles(settings: Settings, item_ids: Collection[str], *, idle_s: float = 3.0) -> dict[str, str]:
    """Titles of ``item_ids`` from the catalog topic (the latest entry by event time wins,
    as in the worker's catalog); items without a title are left out."""
    wanted = set(item_ids)
    best: dict[str, tuple[float, str]] = {}
    if not wanted:
        return {}
    for key, value, _, _, _, ts in scan_timed(settings, settings.topic("item"), idle_s=idle_s):
        if key is None or key.decode("utf-8", "replace") not in wanted:
            continue
        item = decode("item", key, value, max_bytes=settings.max_payload_bytes, record_ts=ts, max_ahead_s=settings.max_event_ahead_s)
        if isinstance(item, Item) and (item.item_id not in best or item.ts >= best[item.item_id][0]):
            best[item.item_id] = (item.ts, item.title)
    return {i: title for i, (_, title) in best.items() if title}


def pick_users(latest: Mapping[str, FinalRecommendations], n: int) -> list[str]:
    """``n`` users with differing histories, the same ones on every run over the same data:
    spread evenly over the users ordered by history length (the final profile version, which
    does not depend on timing, unlike the scores), from the shortest to the longest; users of
    equal length are ordered by a hash of their id."""
    users = sorted(
        (u for u, f in latest.items() if f.message.items),
        key=lambda u: (latest[u].message.profile_version, zlib.crc32(u.encode()), u),
    )
    if n <= 0:
        return []
    if n == 1 or len(users) <= n:
        return users[:n]
    # Distinct spots: with len(users) > n the step (len - 1) / (n - 1) is above 1.
    return [users[round(j * (len(users) - 1) / (n - 1))] for j in range(n)]


def render_recommendations(
    finals: Mapping[str, FinalRecommendations], titles: Mapping[str, str], console: Console
) -> None:
    """One table per user: rank, item and title, score, and the reasons."""
    for user, final in finals.items():
        msg = final.message
        when = datetime.fromtimestamp(msg.trigger_event_ts, tz=timezone.utc).strftime("%Y-%m-%d %H:%M")
        table = Table(
            title=f"user {user}: profile version {msg.profile_version}, final of {final.emitted} messages",
            caption=f"{msg.model}, as of event time {when} UTC ([{final.partition}@{final.offset}])",
        )
        table.add_column("#", justify="right")
        table.add_column("item", no_wrap=True)
        table.add_column("title", max_width=40)
        table.add_column("score", justify="right")
        table.add_column("why")
        for rank, scored in enumerate(msg.items, 1):
            table.add_row(str(rank), scored.item_id, titles.get(scored.item_id, ""), f"{scored.score:.4f}", "; ".join(scored.reasons))
        console.print(table)
