"""The configuration of every Kafka client Persona runs, from one :class:`Settings`.

Three client stacks talk to the brokers: librdkafka (confluent-kafka: the producer, the
admin client, ``inspect``), aiokafka (the catalog and vector replicas) and Faust (its own
aiokafka consumers and producer, configured through ``broker_credentials``). Each one
spells security differently; this module is the only place that translates, so a
``SASL_SSL`` cluster gets TLS *and* SASL from all of them, with the same CA, client
certificate, mechanism and user.

:func:`validate` refuses, at start and with a :class:`~state.errors.ConfigError`, the
settings no client can serve. The builders refuse them too, so no client is ever started
with half of its security settings.
"""

from __future__ import annotations

import ssl
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, Final

from state.errors import BrokerError, ConfigError

if TYPE_CHECKING:
    from faust.types.auth import CredentialsT

    from stream_app.settings import Settings

#: Security protocols every client (librdkafka, aiokafka, Faust) serves.
PROTOCOLS: Final = ("PLAINTEXT", "SSL", "SASL_PLAINTEXT", "SASL_SSL")
#: SASL mechanisms served with a user name and password by librdkafka, aiokafka and
#: ``faust.SASLCredentials`` alike (GSSAPI and OAUTHBEARER need other credentials).
MECHANISMS: Final = ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")
_TLS: Final = ("SSL", "SASL_SSL")
_FILES: Final = ("ssl_cafile", "ssl_certfile", "ssl_keyfile")


def uses_tls(settings: Settings) -> bool:
    return settings.security_protocol in _TLS


def uses_sasl(settings: Settings) -> bool:
    return settings.security_protocol.startswith("SASL")


# --- refusals ------------------------------------------------------------------------------


def problems(settings: Settings) -> list[str]:
    """Every reason why ``settings`` cannot be served; empty when they can (no TLS load)."""
    found: list[str] = []
    if settings.security_protocol not in PROTOCOLS:
        found.append(
            f"PERSONA_SECURITY_PROTOCOL={settings.security_protocol} is not one of {', '.join(PROTOCOLS)}"
        )
    found += settings.security_problems()  # the model's own checks (a model_copy skips them)
    if uses_sasl(settings):
        if settings.sasl_mechanism not in MECHANISMS:
            found.append(
                f"PERSONA_SASL_MECHANISM={settings.sasl_mechanism} cannot be served: "
                f"Persona's clients support {', '.join(MECHANISMS)}"
            )
        if settings.sasl_password is None or not settings.sasl_password.get_secret_value():
            found.append("PERSONA_SASL_PASSWORD is required with a SASL security protocol")
    for name in _FILES:
        path: Path | None = getattr(settings, name)
        if path is None:
            continue
        env = f"PERSONA_{name.upper()}"
        if not path.exists():
            found.append(f"{env}={path}: no such file")
        elif not path.is_file():
            found.append(f"{env}={path}: not a file")
        else:
            try:
                with path.open("rb"):
                    pass
            except OSError as exc:
                found.append(f"{env}={path}: cannot be read ({exc.strerror or exc})")
    return found


def _refuse(settings: Settings) -> None:
    found = problems(settings)
    if found:
        raise ConfigError("Kafka client settings refused: " + "; ".join(found))


def validate(settings: Settings) -> None:
    """The start-time check: raise :class:`ConfigError` unless every client can be built.

    Beyond :func:`problems` this loads the CA, certificate and key into a TLS context, so
    a bad PEM file, a key that does not match its certificate or a wrong key password is
    refused now, not at the first connection.
    """
    _refuse(settings)
    ssl_context(settings)


# --- one TLS context -----------------------------------------------------------------------


def ssl_context(settings: Settings) -> ssl.SSLContext | None:
    """The client TLS context of aiokafka and Faust; ``None`` when the protocol has no TLS.

    Built like ``aiokafka.helpers.create_ssl_context``: server authentication against
    ``ssl_cafile`` (or the system's CAs), the client certificate chain when one is set,
    and hostname checking unless ``ssl_check_hostname`` is off (the certificate is still
    verified against the CA).
    """
    _refuse(settings)
    if not uses_tls(settings):
        return None
    try:
        context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=settings.ssl_cafile)
    except (ssl.SSLError, OSError) as exc:
        raise ConfigError(f"PERSONA_SSL_CAFILE={settings.ssl_cafile}: not a usable CA file ({exc})") from exc
    if settings.ssl_certfile is not None:
        key_password = settings.ssl_key_password

        def password() -> str:
            # Without this callback OpenSSL would prompt on the terminal for the password
            # of an encrypted key, and a worker would hang.
            if key_password is None:
                raise ConfigError(
                    f"PERSONA_SSL_KEYFILE={settings.ssl_keyfile} is encrypted: set PERSONA_SSL_KEY_PASSWORD"
                )
            return key_password.get_secret_value()

        try:
            context.load_cert_chain(settings.ssl_certfile, settings.ssl_keyfile, password)
        except (ssl.SSLError, OSError) as exc:
            # The message names files and OpenSSL's reason, never the password.
            raise ConfigError(
                f"PERSONA_SSL_CERTFILE={settings.ssl_certfile} with PERSONA_SSL_KEYFILE={settings.ssl_keyfile}: "
                f"cannot load the client certificate and key (wrong PERSONA_SSL_KEY_PASSWORD, a key "
                f"that does not match the certificate, or not PEM?): {exc}"
            ) from exc
    context.check_hostname = settings.ssl_check_hostname
    return context


# --- the clients ---------------------------------------------------------------------------


def _password(settings: Settings) -> str:
    return settings.sasl_password.get_secret_value() if settings.sasl_password is not None else ""


def librdkafka(settings: Settings) -> dict[str, Any]:
    """confluent-kafka ``Producer``/``Consumer``/``AdminClient`` settings, credentials included.

    The TLS files are loaded once here too (:func:`validate`), so a bad key or password is
    refused with the same message as for the other clients, not as a librdkafka error.
    """
    validate(settings)
    conf: dict[str, Any] = {
        "bootstrap.servers": settings.bootstrap_servers,
        "security.protocol": settings.security_protocol,
    }
    if uses_sasl(settings):
        conf["sasl.mechanism"] = settings.sasl_mechanism
        conf["sasl.username"] = settings.sasl_username
        conf["sasl.password"] = _password(settings)
    if uses_tls(settings):
        if settings.ssl_cafile is not None:
            conf["ssl.ca.location"] = str(settings.ssl_cafile)
        if settings.ssl_certfile is not None:
            conf["ssl.certificate.location"] = str(settings.ssl_certfile)
        if settings.ssl_keyfile is not None:
            conf["ssl.key.location"] = str(settings.ssl_keyfile)
        if settings.ssl_key_password is not None:
            conf["ssl.key.password"] = settings.ssl_key_password.get_secret_value()
        conf["ssl.endpoint.identification.algorithm"] = "https" if settings.ssl_check_hostname else "none"
    return conf


def aiokafka(settings: Settings) -> dict[str, Any]:
    """Keyword arguments of ``AIOKafkaConsumer``/``AIOKafkaProducer``/``AIOKafkaClient``."""
    kwargs: dict[str, Any] = {
        "bootstrap_servers": [host.strip() for host in settings.bootstrap_servers.split(",") if host.strip()],
        "security_protocol": settings.security_protocol,
    }
    context = ssl_context(settings)  # refuses what cannot be served
    if context is not None:
        kwargs["ssl_context"] = context
    if uses_sasl(settings):
        kwargs["sasl_mechanism"] = settings.sasl_mechanism
        kwargs["sasl_plain_username"] = settings.sasl_username
        kwargs["sasl_plain_password"] = _password(settings)
    return kwargs


def faust_credentials(settings: Settings) -> CredentialsT | None:
    """``faust.App(broker_credentials=...)``: Faust derives its security protocol from it.

    ``faust.SASLCredentials`` means SASL_SSL only when it carries an SSL context (else
    SASL_PLAINTEXT), and ``faust.SSLCredentials`` means SSL: so the context is always given.
    """
    import faust

    context = ssl_context(settings)  # refuses what cannot be served
    if uses_sasl(settings):
        return faust.SASLCredentials(
            username=settings.sasl_username,
            password=_password(settings),
            mechanism=settings.sasl_mechanism,  # faust.types.auth.SASLMechanism(value): the same strings
            ssl_context=context,
        )
    if context is not None:
        return faust.SSLCredentials(context)
    return None


# --- the first connection --------------------------------------------------------------------


class AuthenticationError(BrokerError):
    """The broker refused our credentials or our certificate: retrying cannot help."""


def _explain(settings: Settings, refusal: str) -> str:
    who = f"user {settings.sasl_username!r} ({settings.sasl_mechanism})" if uses_sasl(settings) else "this client"
    hint = "PERSONA_SASL_USERNAME / PERSONA_SASL_PASSWORD" if uses_sasl(settings) else ""
    if uses_tls(settings):
        hint = (hint + " and " if hint else "") + "PERSONA_SSL_CAFILE / PERSONA_SSL_CERTFILE / PERSONA_SSL_KEYFILE"
    return f"Kafka at {settings.bootstrap_servers} refused {who} over {settings.security_protocol}: {refusal}. Check {hint}."


def preflight(settings: Settings, timeout_s: float = 30.0) -> Any:
    """Connect once and read metadata; fail fast and clearly where librdkafka would retry.

    librdkafka treats a refused SASL login or TLS handshake as transient and retries for ever
    (a worker would hang at its first request, a command would time out with "transport
    failure"). Here the first such refusal raises :class:`AuthenticationError` naming the
    user, the protocol and the broker's reason (never the password); an unreachable broker
    raises :class:`BrokerError` after ``timeout_s``. Returns the connected ``AdminClient``.
    """
    from confluent_kafka import KafkaError, KafkaException
    from confluent_kafka.admin import AdminClient

    refused: list[str] = []

    def on_error(err: KafkaError) -> None:
        text = err.str()
        # A refused client certificate reaches a TLS 1.3 client as a transport error carrying
        # the server's alert ("ssl/tls alert bad certificate"), after the handshake.
        tls_alert = err.code() == KafkaError._TRANSPORT and ("SSL routines" in text or "ssl/tls alert" in text)
        if err.code() in (KafkaError._AUTHENTICATION, KafkaError._SSL) or tls_alert or err.fatal():
            refused.append(text)

    # log_level 2: librdkafka's per-attempt connection errors would repeat every 50 ms; the
    # outcome is reported here, once.
    admin = AdminClient(librdkafka(settings) | {"error_cb": on_error, "log_level": 2})
    deadline = time.monotonic() + timeout_s
    last: Exception | None = None
    while True:
        try:
            admin.list_topics(timeout=1.0)
            return admin
        except KafkaException as exc:
            last = exc
        admin.poll(0)  # serves error_cb
        if refused:
            raise AuthenticationError(_explain(settings, refused[0]))
        if time.monotonic() > deadline:
            raise BrokerError(f"cannot reach Kafka at {settings.bootstrap_servers} within {timeout_s:.0f} s: {last}")


def group_committed(settings: Settings, group: str, topic: str, partition: int, timeout_s: float = 10.0) -> int | None:
    """The offset ``group`` has committed on one partition now, from the broker (None: none
    yet, or the broker answered the partition with an error). Blocking: call it off the event
    loop. Through a plain consumer of the group, not the admin client (:class:`GroupPositions`
    says why: the worker calls this in its gap guard and at its start)."""
    consumer = group_reader(settings, group)
    try:
        return _committed(consumer, [(topic, partition)], timeout_s).get((topic, partition))
    finally:
        consumer.close()


def group_reader(settings: Settings, group: str) -> Any:
    """A consumer of ``group`` that never subscribes, so it never joins the group nor commits:
    it only reads the group's committed offsets (OffsetFetch) and partitions' watermarks."""
    from confluent_kafka import Consumer

    return Consumer(librdkafka(settings) | {"group.id": group, "enable.auto.commit": False, "log_level": 2})


def _committed(consumer: Any, partitions: list[tuple[str, int]], timeout_s: float) -> dict[tuple[str, int], int | None]:
    """``(topic, partition) -> the offset the consumer's group committed there, or None`` for
    each partition the broker answered for without an error (one OffsetFetch)."""
    from confluent_kafka import TopicPartition

    answered = consumer.committed([TopicPartition(t, p) for t, p in partitions], timeout=timeout_s)
    return {(tp.topic, tp.partition): int(tp.offset) if tp.offset >= 0 else None for tp in answered if tp.error is None}


class GroupPositions:
    """The group's committed offset and the log's start and end of partitions, from the broker:
    what the lag gauge needs for the partitions a worker owns but has no view of yet (it has
    not committed there, or not fetched). One admin client, made on first use; blocking: call
    it off the event loop."""

    def __init__(self, settings: Settings, group: str) -> None:
        self._settings = settings
        self._group = group
        self._consumer: Any = None

    def __call__(self, partitions: list[tuple[str, int]], timeout_s: float = 3.0) -> dict[tuple[str, int], tuple[int | None, int, int]]:
        """``(topic, partition) -> (committed or None, log start, end)`` for each partition
        the broker answered for. At most ``timeout_s`` for the committed offsets and as long
        again for the logs' ends: a broker that does not answer holds a sampler thread, and a
        stopping worker, only briefly.

        A plain consumer of the group, not the admin client: while a broker restarted, the admin
        requests this made (``list_consumer_group_offsets``, ``list_offsets``) aborted the whole
        worker inside librdkafka 2.16 (``rd_kafka_enq_once_del_source_return: Assertion
        `eonce->refcnt > 0' failed``, two runs of two of the heavy broker-bounce test). The
        consumer never subscribes, so it never joins the group nor commits: it only reads the
        group's committed offsets (OffsetFetch) and each partition's watermarks."""
        from confluent_kafka import KafkaException, TopicPartition

        if not partitions:
            return {}
        if self._consumer is None:
            self._consumer = group_reader(self._settings, self._group)
        committed = _committed(self._consumer, partitions, timeout_s)
        deadline = time.monotonic() + timeout_s
        out: dict[tuple[str, int], tuple[int | None, int, int]] = {}
        for key, offset in committed.items():
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                low, high = self._consumer.get_watermark_offsets(TopicPartition(*key), timeout=left)
            except KafkaException:  # one partition's leader moving: the others still count
                continue
            out[key] = (offset, int(low), int(high))
        return out


#: Broker answers that say "not yet, ask again": a partition whose leader is moving or not yet
#: elected (right after its topic was created, or while a broker restarts). An unknown topic is
#: not among them: callers that ask about a topic that does not exist learn it at once.
_TRANSIENT: Final = frozenset({"NOT_LEADER_FOR_PARTITION", "LEADER_NOT_AVAILABLE"})


def watermarks(consumer: Any, tp: Any, timeout_s: float = 10.0) -> tuple[int, int]:
    """``consumer.get_watermark_offsets(tp)``: (first kept, end) offsets of a partition. An answer
    that is transient (:data:`_TRANSIENT`, or one librdkafka marks retriable) is asked again
    until ``timeout_s``: a snapshot job failed on NOT_LEADER_FOR_PARTITION from a deltas topic
    created a moment before. Any other error, or the last one at the deadline, is raised."""
    from confluent_kafka import KafkaError, KafkaException

    deadline = time.monotonic() + timeout_s
    delay = 0.05
    while True:
        try:
            low, high = consumer.get_watermark_offsets(tp, timeout=max(0.1, deadline - time.monotonic()))
            return int(low), int(high)
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            transient = isinstance(err, KafkaError) and (err.retriable() or err.name() in _TRANSIENT)
            if not transient or time.monotonic() + delay >= deadline:
                raise
        time.sleep(delay)
        delay = min(delay * 2, 1.0)
