"""All of Persona's settings: one frozen model, read from ``PERSONA_*`` environment variables.

Each field's description is the documentation: ``persona config --markdown`` renders the
README's configuration table from this model, so the two cannot drift.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Literal

from pydantic import Field, SecretStr, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from scoring.ranker import Weights
from state.errors import ConfigError
from state.events import EventKind
from state.paths import DEFAULT_DATA_DIR, DEFAULT_MODEL_REGISTRY, DEFAULT_RANKER_REGISTRY, DEFAULT_STATE_DIR, REPO_ROOT
from state.profile import EVENT_WEIGHTS, RATING_WEIGHTS, Params
from stream_app.scale_down import pod_of

SecurityProtocol = Literal["PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL"]
SaslMechanism = Literal["PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512"]
LogLevel = Literal["DEBUG", "INFO", "WARNING", "ERROR"]

_REPO_ROOT = REPO_ROOT  # defaults come from state.paths, the one place for each


class Settings(BaseSettings):
    """Persona's configuration. Environment variables use the ``PERSONA_`` prefix."""

    model_config = SettingsConfigDict(env_prefix="PERSONA_", frozen=True, extra="ignore")

    # --- Kafka -------------------------------------------------------------------------
    bootstrap_servers: str = Field(
        "127.0.0.1:9092", description="Kafka bootstrap servers, comma separated."
    )
    security_protocol: SecurityProtocol = Field("PLAINTEXT", description="Kafka security protocol.")
    sasl_mechanism: SaslMechanism = Field("PLAIN", description="SASL mechanism when SASL is used.")
    sasl_username: str | None = Field(None, description="SASL user name.")
    sasl_password: SecretStr | None = Field(None, description="SASL password (never printed).")
    ssl_cafile: Path | None = Field(
        None,
        description="CA certificate file (PEM) that signed the brokers' certificates, with SSL or "
        "SASL_SSL (default: the system's CAs).",
    )
    ssl_certfile: Path | None = Field(
        None, description="Client certificate file (PEM) for mutual TLS; needs `PERSONA_SSL_KEYFILE`."
    )
    ssl_keyfile: Path | None = Field(None, description="Private key file (PEM) of the client certificate.")
    ssl_key_password: SecretStr | None = Field(
        None, description="Password of an encrypted `PERSONA_SSL_KEYFILE` (never printed)."
    )
    ssl_check_hostname: bool = Field(
        True, description="With SSL or SASL_SSL, check that the broker's certificate names the broker's host."
    )
    app_id: str = Field("persona", description="Faust app id: consumer group and changelog prefix.")
    topic_prefix: str = Field("persona.", description="Prefix of every topic Persona names.")
    partitions: int = Field(
        4, ge=1, description="Partitions of the user-keyed input topics (co-partitioned)."
    )
    item_partitions: int = Field(1, ge=1, description="Partitions of the item catalog topic.")
    replication_factor: int = Field(1, ge=1, description="Replication factor of created topics.")
    max_payload_bytes: int = Field(
        65_536, ge=256, description="Larger records go to the dead-letter topic as `oversized`."
    )
    max_batch_events: int = Field(
        1_000,
        ge=1,
        description="Events one batch record (a JSON array of one user's events) may carry; a larger batch goes to "
        "the dead-letter topic whole, as `oversized`.",
    )
    max_batch_bytes: int = Field(
        1_048_576, ge=256, description="A batch record's value, at most (each of its events also within `max_payload_bytes`)."
    )
    max_event_ahead_s: float = Field(
        86_400.0,
        gt=0,
        description="An event whose time is more than this after its record's Kafka timestamp goes to the "
        "dead-letter topic as `future_time` (one far-future event would zero every other event's decayed weight).",
    )
    profile_cache_bytes: int = Field(
        16 * 1024 * 1024,
        ge=0,
        description="Memory for decoded profiles cached between commits (estimated at 5.5x their "
        "encoded size); least recently used beyond it are written back and dropped.",
    )
    live_quality_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="Memory for each recently ranked user's last list, kept to count live hits "
        "(persona_live_hits_total); least recently ranked beyond it are forgotten (~320 B per "
        "top-10 list: 32 MiB holds ~100k users).",
    )
    social_quiet_bytes: int = Field(
        32 * 1024 * 1024,
        ge=0,
        description="Memory for the recent items of users nobody follows (kept in case a follow "
        "comes later; every worker holds them); least recently engaged beyond it are forgotten "
        "(~0.3 KB for a one-item window, ~3 KB for a full one).",
    )
    rocksdb_write_buffer_bytes: int = Field(
        4 * 1024 * 1024,
        ge=64 * 1024,
        description="RocksDB memtable size per profile partition (Faust's default, 64 MiB, holds "
        "up to 192 MiB per partition in memory before flushing).",
    )
    rocksdb_block_cache_bytes: int = Field(
        8 * 1024 * 1024, ge=0, description="RocksDB block cache per profile partition (Faust's default: 2 GiB)."
    )
    erasure_compaction_s: float = Field(
        86_400.0,
        gt=0,
        description="The profile changelog's max.compaction.lag.ms, in s: an erased profile's older "
        "changelog records are compacted away within this time once later writes roll the segment "
        "(applies when the changelog topic is created).",
    )
    # Faust defaults commit every 10,000 messages or 2.8 s; the 1 s interval keeps the replay
    # after a crash short (at most about a second of input up to 10,000 events/s), and
    # idempotent updates make the replay harmless. The count stays at Faust's 10,000: each
    # commit ranks every pending user early (the pre-commit flush), and 1,000 gave 15-16% more
    # lists and 3-11% more worker CPU per event (docs/PERFORMANCE.md).
    commit_every: int = Field(
        10_000, ge=1, description="Commit offsets after this many events (or after the interval, whichever comes first)."
    )
    commit_interval_s: float = Field(1.0, gt=0, description="Commit offsets at least this often (s).")
    # Faust asks its Kafka client for every record fetched so far (no max_records), and the
    # client prefetches up to a megabyte per partition while the previous batch is worked
    # through: a worker catching up on a backlog held it all as Python records. At 100k users
    # that was ~102k records alive at once, about 48 MB more RSS while draining than with the
    # bound (docs/PERFORMANCE.md). The records beyond it stay in the client as raw bytes.
    max_poll_records: int = Field(
        500,
        ge=0,
        description="Most records the worker takes from its Kafka client at once (Kafka's "
        "max.poll.records; Faust's default, 0 here, is no bound: a backlog's whole prefetch, up "
        "to a megabyte per partition, becomes Python objects at once).",
    )
    # Output waits in Faust's producer buffer until one task hands it to aiokafka; while more
    # than this many wait, Faust stops feeding every stream (backpressure). Faust's 100 stalled
    # consumption at every commit's burst (pending lists, changelog records); a bound by count,
    # as Faust offers, about 1 KB a list.
    producer_buffer_messages: int = Field(
        20_000,
        ge=100,
        description="Produced records that may wait in Faust's producer buffer before the worker "
        "stops feeding its streams until the buffer drains (a list is about 1 KB). 2,000 held "
        "0.89x the RSS per 100k new users of 20,000, and drained a backlog at a median 0.83x "
        "the events/s (0.79-1.10) for 1.2x the CPU per event (docs/PERFORMANCE.md).",
    )
    # With no linger (Faust's and aiokafka's default) the producer sends a request as soon as
    # the loop yields, so a worker's lists, changelog records, deltas and encoded reviews went
    # out in many small requests: each a socket write here and a request for the broker on the
    # same cores. Kafka's own producer lingers 5 ms since 4.0 (KIP-1030). A list leaves up to
    # that much later, and a commit's flush (once a second) waits up to that much longer.
    producer_linger_s: float = Field(
        0.005,
        ge=0,
        le=1.0,
        description="How long the worker's producer waits to fill a batch before sending it (s; "
        "Kafka's linger.ms, 5 ms by default since Kafka 4.0; 0 sends at once, Faust's default).",
    )
    session_timeout_s: float = Field(
        30.0,
        ge=6.0,
        # Kafka's group.max.session.timeout.ms defaults to 30 min (group.min: 6 s).
        le=1800.0,
        description="Consumer group session timeout (s): how long a crashed worker keeps its "
        "partitions before the group moves them (Faust's default is 60; at most 1,800, the "
        "broker's default group.max.session.timeout.ms).",
    )
    # Static membership (KIP-345). Without it a worker that restarts (the supervisor after a
    # faust#596 hole, a pod restart) rejoins as a stranger: every worker in the group stops for a
    # rebalance, and after a kill -9 the group first waits for the dead member's session to end.
    group_instance_id: str | None = Field(
        None,
        min_length=1,
        max_length=249,
        description="Static group membership: a name unique to this worker in its group (in "
        "Kubernetes the StatefulSet pod's name, which `deploy/k8s` sets). A worker that restarts "
        "within session_timeout_s gets its partitions back without a rebalance of the group; the "
        "price: a worker stopped for good keeps its partitions until its session times out (static "
        "members do not leave the group on close) or `persona group leave ID` removes it (or it "
        "removes itself: static_leave). Two live "
        "workers with one id: one stops with exit code 3. Unset: dynamic membership.",
    )
    # A scale-down is the one stop where staying is wrong (stream_app.scale_down).
    static_leave: Literal["never", "kubernetes"] = Field(
        "never",
        description="When a static member leaves its group as it stops for good: `never` (a "
        "scale-down needs `persona group leave`), or `kubernetes`: when its StatefulSet no longer "
        "wants its pod (ordinal >= spec.replicas, read from the Kubernetes API; needs `get` on "
        "statefulsets), so a scaled-away pod's partitions move at once; a restarting pod stays.",
    )
    kubernetes_api: str | None = Field(
        None,
        pattern=r"^https?://",
        description="The Kubernetes API for `static_leave=kubernetes` (e.g. `kubectl proxy`'s "
        "http://127.0.0.1:8001; the service account's token is sent to an https:// one only); "
        "unset: the in-cluster API with the pod's service account.",
    )
    kubernetes_namespace: str | None = Field(
        None, min_length=1, description="The worker pods' namespace; unset: the service account's."
    )
    stall_timeout_s: float = Field(
        30.0,
        gt=0,
        description="A partition whose commit is stuck this long behind records an agent already "
        "finished (faust#596), or that has records the idle worker has not read for this long "
        "(a partition left paused), makes the worker restart itself from the committed offset; a "
        "busy agent (a long encode) is never taken for a stuck one.",
    )
    # --- worker ------------------------------------------------------------------------
    state_dir: Path = Field(
        DEFAULT_STATE_DIR, description="Worker state directory (RocksDB tables)."
    )
    web_host: str = Field("127.0.0.1", description="Host of the worker's web server (/metrics).")
    web_port: int = Field(6066, ge=1, le=65535, description="Port of the worker's web server.")
    log_level: LogLevel = Field("INFO", description="Worker log level.")
    ops_sample_s: float = Field(
        5.0, gt=0, description="How often the worker samples consumer lag and state size for /metrics (s)."
    )
    # --- profiles and recommendations ----------------------------------------------------
    half_life_days: float = Field(
        30.0, gt=0, description="Half-life of decayed affinities, in event-time days."
    )
    popularity_half_life_days: float = Field(
        14.0, gt=0, description="Half-life of decayed item popularity, in event-time days."
    )
    dedupe_window: int = Field(
        32, ge=0, description="Recent event ids remembered per user to drop upstream duplicates."
    )
    top_k: int = Field(10, ge=1, le=1000, description="Recommendations emitted per user.")
    emit_interval_s: float = Field(
        1.0,
        ge=0,
        description="At most one recommendation message per user per interval (s); a change inside it waits for "
        "the interval's end (or the next commit): below saturation it sets the tail of event-to-emit latency "
        "(docs/PERFORMANCE.md: on 2 cores 0.5 halved the p99 at 100-200 events/s, but fell behind at 300 where 1 kept "
        "up). 0: every change emits.",
    )
    catchup_after_s: float = Field(
        10.0,
        ge=0,
        description="A change whose record is older than this (s, by its Kafka timestamp) is a backlog's: its user's "
        "list waits for the end of the emit interval instead of going out at once, so a catching-up worker ranks a busy "
        "user once per interval, not at the first and the last change of it. 0: never.",
    )
    ranker: Literal["blend", "baseline"] = Field(
        "blend",
        description="`blend`: collaborative (co-occurrence), content (text), category-affinity, trending, "
        "social and attribute-segment candidates scored by the weights below (scoring/ranker.py); "
        "`baseline`: category affinity x popularity (scoring/baseline.py).",
    )
    rank_cooc_weight: float = Field(1.0, ge=0, description="Ranker weight of the co-occurrence feature.")
    rank_category_weight: float = Field(0.3, ge=0, description="Ranker weight of the category-affinity feature.")
    rank_trending_weight: float = Field(0.2, ge=0, description="Ranker weight of the trending (decayed popularity) feature.")
    rank_content_weight: float = Field(
        0.3, ge=0, description="Ranker weight of the content feature: cosine of the user's interest vector and the item's text vector."
    )
    rank_social_weight: float = Field(0.1, ge=0, description="Ranker weight of what the people a user follows engaged with.")
    rank_segment_weight: float = Field(
        0.05, ge=0, description="Ranker weight of what users of the same attribute segments (age band, occupation, ...) engage with."
    )
    rank_sentiment_weight: float = Field(
        0.1, ge=0, description="Ranker demotion of items close to what the user reviewed badly (subtracted)."
    )
    exclude_clicked: bool = Field(False, description="Never recommend an item the user clicked (purchased items never are).")
    social_fanout: int = Field(
        20, ge=0, description="When a user engages, refresh the lists of at most this many of their followers (0: none)."
    )
    shared_snapshot: bool = Field(
        True,
        description="Start from the latest snapshot of the shared scoring state (`persona shared snapshot`) and read "
        "the deltas after it, instead of the whole deltas topic. A snapshot of other scoring settings is ignored.",
    )
    shared_snapshot_check_s: float = Field(
        300.0,
        gt=0,
        description="How often a worker reads how far the latest snapshot lags the deltas topic, for "
        "`persona_shared_snapshot_*` and the PersonaSharedSnapshotStale alert (s).",
    )
    cooc_neighbours: int = Field(
        500,
        ge=0,
        description="Co-occurrence neighbours kept per item: a row reaching twice this is cut to its largest counts (0: unbounded).",
    )
    # 20, not the ranker's 50-item history: better on the validation slices (MovieLens-100k NDCG@10
    # .1153 against .1112 at 50, .1134 at 10) and 2.2x cheaper per delta on every worker
    # (docs/EVALUATION.md, "Co-occurrence window").
    cooc_window: int = Field(
        20,
        ge=1,
        description="A user's last distinct items a newly engaged item co-occurs with: the cost of a first engagement, on "
        "every worker (each folds in every delta), grows with it.",
    )
    rank_recency: float = Field(
        0.8, gt=0, le=1, description="Weight of the n-th most recent history item in the co-occurrence score: recency**n."
    )
    rank_diversity: float = Field(
        0.0, ge=0, le=1, description="MMR diversity weight: 0 ranks by score only; higher repeats categories less."
    )
    event_weights: dict[str, float] = Field(
        default_factory=lambda: dict(EVENT_WEIGHTS),
        description="Behaviour weight of each event kind (category affinity and item popularity), "
        'as JSON, e.g. `{"click": 1, "purchase": 3, "review": 2}`.',
    )
    rating_weights: dict[int, float] = Field(
        default_factory=lambda: dict(RATING_WEIGHTS),
        description="Multiplier of a review's weight by its rounded stars, as JSON "
        '(`{"1": 0, "2": 0.5, ...}`); 1 everywhere by default.',
    )
    # --- encoders ----------------------------------------------------------------------
    model_registry: Path = Field(
        DEFAULT_MODEL_REGISTRY,
        description="Encoder registry folder (versions + CURRENT); reviews get no text "
        "vectors while it has no CURRENT.",
    )
    ranker_registry: Path = Field(
        DEFAULT_RANKER_REGISTRY,
        description="Trained-ranker registry folder (versions + CURRENT, written by `persona train`); "
        "the hand-set weights rank while it has no CURRENT.",
    )
    model_device: Literal["auto", "cpu", "cuda"] = Field(
        "auto", description="Where encoders run: CUDA when available (auto), or forced."
    )
    model_fp16: bool = Field(
        True, description="On CUDA, run the artifact's fp16 graph when it carries one (fp32 exports do)."
    )
    model_threads: int | None = Field(
        None,
        ge=1,
        description="CPU inference threads (default: one per core this process may use). A core fewer leaves one to the "
        "event loop: on 2 cores, 1 kept up with a mixed live stream at 400 events/s where 2 saturated, and drained a "
        "review backlog at 0.56-0.64x the rate (docs/PERFORMANCE.md).",
    )
    model_spin: bool = Field(
        False,
        description="Let the encoder's CPU threads spin-wait between inference calls (onnxruntime's default). Off: they "
        "block, and leave the cores to the worker's event loop and the broker (see `persona bench reviews`).",
    )
    model_poll_s: float = Field(10.0, gt=0, description="How often workers look for a new CURRENT encoder.")
    review_batch: int = Field(64, ge=1, description="Most reviews encoded in one micro-batch (and rows per inference call).")
    model_batch_tokens: int | None = Field(
        None,
        ge=0,
        description="Most padded tokens (rows x longest) per inference call; 0: rows only; unset: 1024 on CPU "
        "(a row count alone padded 60% of the reviews' compute away), rows only on CUDA. On a GPU, e.g. 65536 "
        "with PERSONA_REVIEW_BATCH=1024: full batches of short texts, bounded ones of long texts.",
    )
    delta_batch: int = Field(
        256,
        ge=1,
        description="Most scoring deltas sent in one record of the deltas topic (1: one per record, "
        "readable by workers that predate batches: use it while rolling an upgrade from them).",
    )
    review_wait_s: float = Field(0.05, gt=0, description="Longest wait to fill a micro-batch (s).")
    # --- data --------------------------------------------------------------------------
    data_dir: Path = Field(
        DEFAULT_DATA_DIR,
        description="Folder of the public datasets the demo and tests replay.",
    )

    @model_validator(mode="after")
    def _check(self) -> Settings:
        unknown = set(self.event_weights) - {"click", "purchase", "review"}
        if unknown:
            raise ConfigError(f"PERSONA_EVENT_WEIGHTS: unknown event kinds {sorted(unknown)} (click, purchase, review)")
        if any(w < 0 for w in (*self.event_weights.values(), *self.rating_weights.values())):
            raise ConfigError("PERSONA_EVENT_WEIGHTS / PERSONA_RATING_WEIGHTS: weights must be >= 0")
        if set(self.rating_weights) - {1, 2, 3, 4, 5}:
            raise ConfigError("PERSONA_RATING_WEIGHTS: keys are stars 1..5")
        if self.static_leave == "kubernetes":
            # Said at start, not found at the stop it was meant for.
            if not self.group_instance_id:
                raise ConfigError("PERSONA_STATIC_LEAVE=kubernetes is for static members: set PERSONA_GROUP_INSTANCE_ID "
                                  "to the pod's name (a dynamic member leaves its group as it stops anyway)")
            if pod_of(self.group_instance_id) is None:
                raise ConfigError(f"PERSONA_STATIC_LEAVE=kubernetes: PERSONA_GROUP_INSTANCE_ID={self.group_instance_id!r} "
                                  "is not a StatefulSet pod's name (<statefulset>-<ordinal>)")
        problems = self.security_problems()
        if problems:
            raise ConfigError("; ".join(problems))
        return self

    def security_problems(self) -> list[str]:
        """What makes the Kafka security settings inconsistent, without touching files.

        The start-time check (``stream_app.kafka_clients.validate``) repeats these (a
        ``model_copy`` skips validators) and adds what needs the files or the clients: a
        SASL password, existing and loadable certificate files.
        """
        problems: list[str] = []
        protocol = self.security_protocol
        if protocol.startswith("SASL"):
            if not self.sasl_username:
                problems.append("PERSONA_SASL_USERNAME is required with a SASL security protocol")
        else:
            stray = [n for n in ("sasl_username", "sasl_password") if getattr(self, n) is not None]
            if stray:
                problems.append(
                    f"{_env(stray)} set but PERSONA_SECURITY_PROTOCOL={protocol} does not use SASL "
                    "(use SASL_PLAINTEXT or SASL_SSL, or unset them)"
                )
        ssl_fields = ("ssl_cafile", "ssl_certfile", "ssl_keyfile", "ssl_key_password")
        if protocol not in ("SSL", "SASL_SSL"):
            stray = [n for n in ssl_fields if getattr(self, n) is not None]
            if stray:
                problems.append(
                    f"{_env(stray)} set but PERSONA_SECURITY_PROTOCOL={protocol} does not use TLS "
                    "(use SSL or SASL_SSL, or unset them)"
                )
        if self.ssl_certfile is not None and self.ssl_keyfile is None:
            problems.append("PERSONA_SSL_CERTFILE (client certificate) needs PERSONA_SSL_KEYFILE (its private key)")
        if self.ssl_keyfile is not None and self.ssl_certfile is None:
            problems.append("PERSONA_SSL_KEYFILE needs PERSONA_SSL_CERTFILE (the client certificate it belongs to)")
        if self.ssl_key_password is not None and self.ssl_keyfile is None:
            problems.append("PERSONA_SSL_KEY_PASSWORD is set but PERSONA_SSL_KEYFILE is not")
        return problems

    # --- derived -----------------------------------------------------------------------
    def topic(self, kind: EventKind) -> str:
        """The input topic carrying ``kind`` events."""
        return f"{self.topic_prefix}{kind}s"

    @property
    def encoded_reviews_topic(self) -> str:
        """Internal: stage 1 (batch encoder) -> stage 2 (profile), co-partitioned."""
        return f"{self.topic_prefix}reviews.encoded"

    @property
    def item_vectors_topic(self) -> str:
        """Internal, compacted: the latest text vector of every item (key = item id)."""
        return f"{self.topic_prefix}items.vectors"

    @property
    def scoring_deltas_topic(self) -> str:
        """Internal: every worker's scoring deltas, read by every worker (stream_app/shared_replica.py)."""
        return f"{self.topic_prefix}scoring.deltas"

    @property
    def scoring_snapshots_topic(self) -> str:
        """Internal, compacted: the latest snapshot of the shared scoring state (stream_app/snapshots.py)."""
        return f"{self.topic_prefix}scoring.snapshots"

    @property
    def snapshot_transactional_id(self) -> str:
        """The snapshot job's Kafka transactional id: one per snapshots topic, so that a run
        fences every other run of the same deployment (stream_app/snapshot_job.py, ``write``)."""
        return f"persona-shared-snapshot.{self.scoring_snapshots_topic}"

    @property
    def poison_topic(self) -> str:
        """Internal, compacted: the records of this worker group that raised a bug and were
        dead-lettered, so that whichever worker replays one passes it by (stream_app/poison.py)."""
        return f"{self.topic_prefix}poison.{self.app_id}"

    @property
    def control_topic(self) -> str:
        """Model announcements (publish, rollback, trials), read by every worker (stream_app/control.py)."""
        return f"{self.topic_prefix}control"

    @property
    def recommendations_topic(self) -> str:
        return f"{self.topic_prefix}recommendations"

    def rank_weights(self) -> Weights:
        """The ranker's weights, from these settings."""
        return Weights(
            cooc=self.rank_cooc_weight,
            category=self.rank_category_weight,
            trending=self.rank_trending_weight,
            content=self.rank_content_weight,
            social=self.rank_social_weight,
            segment=self.rank_segment_weight,
            sentiment=self.rank_sentiment_weight,
            diversity=self.rank_diversity,
            recency=self.rank_recency,
            exclude_clicked=self.exclude_clicked,
        )

    def params(self) -> Params:
        """The profile math's knobs, from these settings (one place for every caller)."""
        return Params(
            half_life_days=self.half_life_days,
            dedupe_window=self.dedupe_window,
            event_weights=dict(self.event_weights),
            rating_weights=dict(self.rating_weights),
        )

    def partitions_for(self, kind: EventKind) -> int:
        return self.item_partitions if kind == "item" else self.partitions

    def kafka_config(self) -> dict[str, Any]:
        """librdkafka (confluent-kafka) client settings: ``kafka_clients.librdkafka(self)``."""
        from stream_app import kafka_clients

        return kafka_clients.librdkafka(self)

    def masked(self) -> dict[str, Any]:
        """The effective settings, safe to print: secrets show as ``**********``."""
        out: dict[str, Any] = {}
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr):
                value = "**********"
            elif isinstance(value, Path):
                value = str(value)
            out[name] = value
        return out


def _env(names: list[str]) -> str:
    """``PERSONA_A, PERSONA_B is/are`` for messages."""
    return ", ".join(f"PERSONA_{n.upper()}" for n in names) + (" is" if len(names) == 1 else " are")


def markdown_table() -> str:
    """The configuration table for the README, from the model itself."""
    rows = ["| env var | default | meaning |", "|---|---|---|"]
    for name, field in Settings.model_fields.items():
        default = field.get_default(call_default_factory=True)
        if isinstance(default, Path):
            try:
                default = "<repo>/" + str(default.relative_to(_REPO_ROOT))
            except ValueError:
                default = "<repo>/../" + str(default.relative_to(_REPO_ROOT.parent))
        elif isinstance(default, dict):
            default = json.dumps(default)  # what the environment variable takes
        rows.append(f"| `PERSONA_{name.upper()}` | `{default}` | {field.description} |")
    return "\n".join(rows)
