"""Global scoring knowledge, built from deltas: the same on every worker, whatever it owns.

Profiles are partitioned by user, but what the ranker knows about *items* and about *other
users* is global: popularity, co-occurrence, item content vectors, what each attribute
segment engages with, and who follows whom. The worker that owns a user's partition turns
each applied event into a :class:`Delta` (everything that event teaches the global state,
including the facts only the owner knows, such as the user's history before the event and
their attribute segments), applies it at once to its own :class:`SharedState` and publishes
it on the ``scoring.deltas`` topic. Every worker tails all partitions of that topic and
applies the deltas of the others (``stream_app.shared_replica``).

Idempotent: every delta names its input record (``source`` = topic:partition, ``offset``)
and the state keeps the highest offset applied per source; a delta at or below it is a
replay and is skipped. Deltas of one source are produced in offset order by whichever worker
owns that partition, so the watermark also covers a partition that moved between workers.

Nearly order-free: each part sums contributions that do not depend on the order they arrive
in (decayed sums kept at a reference time, integer co-occurrence counts, vector sums), so two
workers that applied the same deltas in different orders agree, up to float rounding in the
last bits of a decayed sum, but for one thing: a co-occurrence row cut to its bound keeps what
its counts were *at the cut* (``scoring.knn``), so cut rows can differ in their tail, and a
snapshot's bytes differ with them (rows are also stored in the order items first arrived).
``persona bench replication`` measures it: on MovieLens-100k, 80 of 1,682 rows differed and 927
of 943 users' lists were identical (941 with the same items). Event time only: nothing here
reads a clock.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import msgspec
import numpy as np

from scoring.content import ContentIndex
from scoring.knn import ItemKNN, KNNSnapshot
from scoring.popularity import Popularity, PopularitySnapshot
from scoring.segments import SegmentPopularity, SegmentSnapshot
from scoring.social import QUIET_BYTES, SocialGraph, SocialSnapshot
from state.errors import StateError
from state.interest import ItemVector
from state.profile import advance, seen

ENGAGE = "engage"
FOLLOW = "follow"
UNFOLLOW = "unfollow"
#: a user was erased: ``ts`` is the event time the erasure covers
ERASE = "erase"


class Delta(msgspec.Struct, frozen=True, kw_only=True):
    """What one applied input record teaches the global scoring state (MessagePack on the wire)."""

    #: the input record: ``topic:partition`` and offset (the idempotency watermark)
    source: str
    offset: int
    kind: str
    #: the event's place in a batch record (``state.profile.Origin``): event ``index`` of ``of``
    index: int = 0
    of: int = 1
    user: str
    ts: float
    item: str = ""
    #: behaviour weight of the engagement (``Params.weight``)
    weight: float = 0.0
    #: the user's first engagement with ``item``: it co-occurs with ``recent``
    first: bool = False
    #: the user's last items before this one, oldest first (co-occurrence window)
    recent: list[str] = []
    #: the user's attribute segments (``scoring.segments.segments_of``) when it engaged
    segments: list[str] = []
    #: a review's text vector (float32 bytes) and its encoder version: the item's review centroid
    vector: bytes = b""
    version: str = ""
    #: followee of a follow / unfollow
    target: str = ""


_encoder = msgspec.msgpack.Encoder()
_decoder = msgspec.msgpack.Decoder(Delta)
# A record holds one delta (a map: what workers before batching wrote, still on the topic,
# whose retention is forever) or a batch of them (an array).
_records = msgspec.msgpack.Decoder(Delta | list[Delta])


def encode_delta(delta: Delta) -> bytes:
    return _encoder.encode(delta)


def decode_delta(data: bytes) -> Delta:
    return _decoder.decode(data)


#: A deltas record's header: ``b"<count>:<offset>:<index>"``, how many deltas it holds and the
#: highest (offset, index) among them. They are all of one source (the record's key), and
#: watermarks only rise, so a reader whose watermark covers that highest one has applied every
#: delta in the record: it skips the record undecoded (:meth:`SharedState.covered`). Every
#: worker reads its own deltas back, and decoding them only to find them applied was a twentieth
#: of a worker's main thread (py-spy, ``bench stream`` batch records).
MARK_HEADER = "persona.deltas"


def encode_mark(count: int, offset: int, index: int) -> bytes:
    """The value of :data:`MARK_HEADER` for ``count`` deltas whose highest is (offset, index)."""
    return b"%d:%d:%d" % (count, offset, index)


def encode_batch(encoded: Sequence[bytes]) -> bytes:
    """Deltas already encoded with :func:`encode_delta`, as one record: a MessagePack array
    whose elements are those bytes unchanged (no second encoding)."""
    n = len(encoded)
    if n < 16:
        header = bytes([0x90 | n])
    elif n < 1 << 16:
        header = b"\xdc" + n.to_bytes(2, "big")
    else:
        header = b"\xdd" + n.to_bytes(4, "big")
    return header + b"".join(encoded)


def decode_record(data: bytes) -> list[Delta]:
    """The deltas of one record of the deltas topic: a single delta or a batch."""
    got = _records.decode(data)
    return got if isinstance(got, list) else [got]


class SharedState:
    """Popularity, co-occurrence, content vectors, segment priors and the social graph."""

    def __init__(
        self,
        *,
        popularity: Popularity,
        half_life_days: float,
        knn: ItemKNN | None = None,
        social_recent: int = 20,
        fanout_cap: int = 1000,
        social_quiet_bytes: int = QUIET_BYTES,
    ) -> None:
        self.popularity = popularity
        self.knn = knn if knn is not None else ItemKNN()
        self.content = ContentIndex()
        self.segments = SegmentPopularity(half_life_days)
        self.social = SocialGraph(
            half_life_days=half_life_days, recent=social_recent, fanout_cap=fanout_cap, quiet_bytes=social_quiet_bytes
        )
        #: the settings a snapshot must share to be restored here (the state depends on them)
        self.config: dict[str, float] = {
            "popularity_half_life_days": popularity.half_life_days,
            "half_life_days": half_life_days,
            "cooc_window": self.knn.window,
            "cooc_neighbours": self.knn.max_neighbours,
            "social_recent": social_recent,
            "social_fanout_cap": fanout_cap,
            "social_quiet_bytes": social_quiet_bytes,
        }
        #: source -> highest offset applied
        self.watermarks: dict[str, int] = {}
        #: source -> the last event applied of the batch record at its watermark, while that
        #: batch is applied only in part (``state.profile.seen``)
        self.watermark_index: dict[str, int] = {}
        #: item -> [sum of its review vectors (float64), version]: the item's text when the
        #: catalog has none (Amazon Musical Instruments has no metadata at all)
        self._centroids: dict[str, tuple[np.ndarray, str]] = {}
        #: items whose vector comes from the catalog text (never overwritten by a centroid)
        self._catalog_text: set[str] = set()
        self.applied = 0
        self.skipped = 0
        #: derived data the ranker keeps between rankings (e.g. the catalog's fill order)
        self.cache: dict[str, Any] = {}
        #: user -> the event time their latest erasure covers (the suppression list: a replayed
        #: delta of theirs, or naming them, from at or before it leaves no trace here)
        self.erased: dict[str, float] = {}

    def is_erased(self, user: str, ts: float) -> bool:
        """Whether an event of ``user`` at event time ``ts`` falls under an erasure."""
        covered = self.erased.get(user)
        return covered is not None and ts <= covered

    def seen(self, delta: Delta) -> bool:
        return seen(delta.offset, delta.index, self.watermarks.get(delta.source, -1), self.watermark_index.get(delta.source))

    def covered(self, source: str, mark: bytes) -> int | None:
        """How many deltas a record of ``source`` holds when its :data:`MARK_HEADER` ``mark``
        says every one of them was applied here (counted as skipped, as :meth:`apply` would
        count them); None when some may be new or the mark is unreadable: decode the record."""
        try:
            count, offset, index = (int(x) for x in mark.split(b":"))
        except ValueError:
            return None
        if count < 1 or not seen(offset, index, self.watermarks.get(source, -1), self.watermark_index.get(source)):
            return None
        self.skipped += count
        return count

    def apply(self, delta: Delta) -> bool:
        """Fold ``delta`` in; ``False`` when it was applied before (a replay)."""
        if self.seen(delta):
            self.skipped += 1
            return False
        advance(self.watermarks, self.watermark_index, delta.source, delta.offset, delta.index, delta.of)
        self.applied += 1
        # Erasure removes what *names* a user (social edges, recent engagement); the anonymous
        # aggregates an engagement fed (popularity, co-occurrence, segment counts, review
        # centroids) keep it, so every worker agrees whichever order its replay of the deltas
        # topic meets an erasure and the user's older deltas in (they sit on other partitions).
        named = not self.is_erased(delta.user, delta.ts)
        if delta.kind == ENGAGE:
            if delta.weight:
                self.popularity.add(delta.item, delta.weight, delta.ts)
                if delta.segments:
                    self.segments.add(delta.segments, delta.item, delta.weight, delta.ts)
                if named:
                    self.social.engaged(delta.user, delta.item, delta.weight, delta.ts)
            if delta.first:
                self.knn.add(delta.recent, delta.item)
            if delta.vector:
                self._add_review_vector(delta.item, delta.version, np.frombuffer(delta.vector, dtype="<f4"))
        elif delta.kind in (FOLLOW, UNFOLLOW):
            if named and not self.is_erased(delta.target, delta.ts):
                if delta.kind == FOLLOW:
                    self.social.follow(delta.user, delta.target, delta.ts)
                else:
                    self.social.unfollow(delta.user, delta.target, delta.ts)
        elif delta.kind == ERASE:
            self.erased[delta.user] = max(delta.ts, self.erased.get(delta.user, delta.ts))
            self.social.forget(delta.user)
        return True

    def _add_review_vector(self, item: str, version: str, vector: np.ndarray) -> None:
        if item in self._catalog_text and self.content.version == version:
            return
        entry = self._centroids.get(item)
        if entry is None or entry[1] != version:
            total = vector.astype(np.float64)
        else:
            total = entry[0] + vector
        self._centroids[item] = (total, version)
        if float(np.linalg.norm(total)) > 0.0:
            self.content.upsert(item, version, total.astype(np.float32))

    def item_vector(self, vector: ItemVector) -> None:
        """An item's catalog-text vector (the item-vectors replica): it wins over the item's
        review centroid for that encoder version."""
        self._catalog_text.add(vector.item_id)
        self.content.upsert(vector.item_id, vector.version, vector.array())

    def summary(self) -> Mapping[str, int]:
        return {
            "items_popular": len(self.popularity),
            "items_cooc": len(self.knn),
            "items_content": len(self.content),
            "follow_edges": self.social.edges(),
            "users_erased": len(self.erased),
            "deltas_applied": self.applied,
            "deltas_skipped": self.skipped,
            "sources": len(self.watermarks),
        }

    # --- snapshots ---------------------------------------------------------------------------
    def snapshot(self) -> bytes:
        """Everything the deltas taught this state, as bytes (:class:`SharedSnapshot`).

        Catalog-text vectors are not in it: they come from the item-vectors topic, which a
        worker reads in full anyway. The ranking cache is derived and left out too."""
        content_version = self.content.version
        content_items = [
            item
            for item in self.content.items()
            if item not in self._catalog_text and (c := self._centroids.get(item)) is not None and c[1] == content_version
        ]
        snap = SharedSnapshot(
            format=SNAPSHOT_FORMAT,
            config=dict(self.config),
            watermarks=dict(self.watermarks),
            watermark_index=dict(self.watermark_index),
            erased=dict(self.erased),
            applied=self.applied,
            skipped=self.skipped,
            popularity=self.popularity.snapshot(),
            knn=self.knn.snapshot(),
            segments=self.segments.snapshot(),
            social=self.social.snapshot(),
            centroids=[
                Centroid(item=item, version=version, total=total.astype("<f8").tobytes())
                for item, (total, version) in self._centroids.items()
            ],
            content_version=content_version,
            content_items=content_items,
        )
        return _snapshot_encoder.encode(snap)

    def restore(self, data: bytes) -> None:
        """Load a :meth:`snapshot` into this state, which must be new and configured alike.

        Raises :class:`SnapshotError` for unreadable bytes, another format, other settings
        or a state that has applied deltas already."""
        self.adopt(self.stage(data))

    def _refuse_unless_new(self) -> None:
        # Catalog-text vectors may be here already (they are not part of a snapshot).
        if self.applied or self.watermarks or len(self.popularity) or len(self.knn) or self._centroids or self.erased:
            raise SnapshotError("a snapshot can only be restored into a new shared state")

    def stage(self, data: bytes) -> StagedSnapshot:
        """The first half of :meth:`restore`, the costly one: decode and check ``data`` and build
        its parts in new objects made as this state's. It reads only this state's settings, so a
        worker runs it in a thread while its event loop goes on (other replicas write to this
        state meanwhile); :meth:`adopt` then takes the parts over on the loop."""
        self._refuse_unless_new()
        try:
            # The format first: a snapshot of another format may not decode as this one.
            head = _head_decoder.decode(data)
            if head.format != SNAPSHOT_FORMAT:
                raise SnapshotError(f"snapshot format {head.format}, this build reads {SNAPSHOT_FORMAT}")
            snap = _snapshot_decoder.decode(data)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise SnapshotError(f"unreadable shared-state snapshot: {exc}") from exc
        differ = config_differences(snap.config, self.config)
        if differ:
            raise SnapshotError("the snapshot was taken with other scoring settings: " + ", ".join(differ))
        staged = StagedSnapshot(
            snap=snap,
            popularity=self.popularity.empty_like(),
            knn=self.knn.empty_like(),
            segments=self.segments.empty_like(),
            social=self.social.empty_like(),
            centroids={c.item: (np.frombuffer(c.total, dtype="<f8").astype(np.float64), c.version) for c in snap.centroids},
        )
        try:
            staged.popularity.restore(snap.popularity)
            staged.knn.restore(snap.knn)
            staged.segments.restore(snap.segments)
            staged.social.restore(snap.social)
        except ValueError as exc:
            raise SnapshotError(f"inconsistent shared-state snapshot: {exc}") from exc
        return staged

    def adopt(self, staged: StagedSnapshot) -> None:
        """The second half of :meth:`restore`: take over ``staged``'s parts (this state must
        still be new) and index its review centroids, after the catalog-text vectors that
        reached this state first."""
        self._refuse_unless_new()
        snap = staged.snap
        self.popularity, self.knn, self.segments, self.social = staged.popularity, staged.knn, staged.segments, staged.social
        self.watermarks = dict(snap.watermarks)
        self.watermark_index = dict(snap.watermark_index)
        self.erased = dict(snap.erased)
        self.applied, self.skipped = snap.applied, snap.skipped
        self._centroids = staged.centroids
        self.cache.clear()  # derived from the parts just replaced
        # The content index gets the centroids it held, in the order it first held them; an item
        # whose catalog text is already here (the item-vectors replica ran first) keeps it, as
        # _add_review_vector would have.
        for item in snap.content_items:
            total, version = self._centroids[item]
            if item in self._catalog_text and self.content.version == version:
                continue
            if version == snap.content_version and float(np.linalg.norm(total)) > 0.0:
                self.content.upsert(item, version, total.astype(np.float32))


@dataclass(frozen=True)
class StagedSnapshot:
    """A snapshot decoded and its parts built (:meth:`SharedState.stage`), for :meth:`SharedState.adopt`."""

    snap: SharedSnapshot
    popularity: Popularity
    knn: ItemKNN
    segments: SegmentPopularity
    social: SocialGraph
    centroids: dict[str, tuple[np.ndarray, str]]


def config_differences(theirs: Mapping[str, float], ours: Mapping[str, float]) -> list[str]:
    """``"name theirs (here ours)"`` for each scoring setting a snapshot was taken with that
    differs from this state's (empty: the snapshot can be restored here)."""

    def show(value: float | None) -> str:
        # MessagePack brings an int setting back as the float it was declared (3.0): print both as 3.
        if value is None:
            return "unset"
        return str(int(value)) if float(value).is_integer() else repr(float(value))

    return [
        f"{k} {show(theirs.get(k))} (here {show(ours.get(k))})"
        for k in sorted(set(theirs) | set(ours))
        if theirs.get(k) != ours.get(k)
    ]


def new_shared_state(
    *, popularity_half_life_days: float, cooc_neighbours: int, social_fanout: int, social_quiet_bytes: int
) -> SharedState:
    """An empty global scoring state as a worker configures it (the pipeline, and the snapshot
    job that must build the same one for a worker to restore it)."""
    return SharedState(
        popularity=Popularity(popularity_half_life_days),
        knn=ItemKNN(max_neighbours=cooc_neighbours),
        half_life_days=popularity_half_life_days,
        fanout_cap=max(social_fanout, 1),
        social_quiet_bytes=social_quiet_bytes,
    )


#: Bumped when :class:`SharedSnapshot` changes incompatibly: an old snapshot is then ignored
#: (the worker replays the deltas topic) or refused (where the deltas it covers were deleted).
SNAPSHOT_FORMAT = 1


class SnapshotError(StateError):
    """A shared-state snapshot cannot be restored here (unreadable, another format, other settings)."""


class Centroid(msgspec.Struct, frozen=True, array_like=True):
    """An item's sum of review vectors (float64, little-endian) and their encoder version."""

    item: str
    version: str
    total: bytes


class SharedSnapshot(msgspec.Struct, frozen=True, kw_only=True):
    """:class:`SharedState` at one point of the deltas topic (``stream_app.snapshots`` stores it)."""

    format: int
    config: dict[str, float]
    watermarks: dict[str, int]
    erased: dict[str, float]
    applied: int
    skipped: int
    popularity: PopularitySnapshot
    knn: KNNSnapshot
    segments: list[SegmentSnapshot]
    social: SocialSnapshot
    centroids: list[Centroid]
    content_version: str | None
    content_items: list[str]
    #: ``SharedState.watermark_index`` (absent from snapshots written before batch records)
    watermark_index: dict[str, int] = {}


class _Head(msgspec.Struct):
    format: int


_head_decoder = msgspec.msgpack.Decoder(_Head)
_snapshot_encoder = msgspec.msgpack.Encoder()
_snapshot_decoder = msgspec.msgpack.Decoder(SharedSnapshot)
