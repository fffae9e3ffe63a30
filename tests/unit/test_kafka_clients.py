"""One Kafka client configuration: librdkafka, aiokafka and Faust agree on security.

For every protocol (and SASL mechanism), the confluent-kafka settings, the aiokafka
kwargs, Faust's credentials *and* the aiokafka consumer/producer kwargs Faust derives
from them carry the same protocol, mechanism, user, password and TLS material. The PKI
(a CA, a broker certificate, a client certificate with a plain and an encrypted key) is
made with the ``openssl`` command in a temporary folder.
"""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import socket
import ssl
import subprocess
import threading
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiokafka
import faust
import pytest
from faust.transport.drivers.aiokafka import credentials_to_aiokafka_auth
from faust.types.auth import AuthProtocol
from pydantic import SecretStr, ValidationError

from state.errors import ConfigError
from stream_app import catalog_replica, kafka_clients
from stream_app.catalog_replica import CatalogReplica
from stream_app.item_vectors import VectorReplica
from stream_app.settings import Settings

KEY_PASSWORD = "key-pass-never-shown"
SASL_PASSWORD = "sasl-pass-never-shown"

pytestmark = pytest.mark.skipif(shutil.which("openssl") is None, reason="needs the openssl command")


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("PERSONA_"):
            monkeypatch.delenv(name)
    yield


# --- a small PKI -----------------------------------------------------------------------------


@dataclass(frozen=True)
class Pki:
    ca: Path
    server_cert: Path
    server_key: Path
    client_cert: Path
    client_key: Path
    client_key_encrypted: Path
    other_key: Path  # a key that belongs to no certificate here
    garbage: Path


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


def _signed(d: Path, name: str, cn: str, ext: str) -> None:
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", f"{name}.key", cwd=d)
    _openssl("req", "-new", "-key", f"{name}.key", "-subj", f"/CN={cn}", "-out", f"{name}.csr", cwd=d)
    (d / f"{name}.ext").write_text(ext)
    _openssl(
        "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
        "-days", "2", "-sha256", "-extfile", f"{name}.ext", "-out", f"{name}.pem", cwd=d,
    )


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    d = tmp_path_factory.mktemp("pki")
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "ca.key", cwd=d)
    _openssl(
        "req", "-x509", "-new", "-key", "ca.key", "-subj", "/CN=Persona test CA", "-days", "2", "-sha256",
        "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign,cRLSign",
        "-out", "ca.pem", cwd=d,
    )
    _signed(d, "server", "localhost", "subjectAltName=DNS:localhost,IP:127.0.0.1\nextendedKeyUsage=serverAuth\n")
    _signed(d, "client", "persona-worker", "extendedKeyUsage=clientAuth\n")
    _openssl("pkey", "-in", "client.key", "-aes256", "-passout", f"pass:{KEY_PASSWORD}", "-out", "client.enc.key", cwd=d)
    _openssl("ecparam", "-name", "prime256v1", "-genkey", "-noout", "-out", "other.key", cwd=d)
    (d / "garbage.pem").write_text("this is not a certificate\n")
    return Pki(
        ca=d / "ca.pem", server_cert=d / "server.pem", server_key=d / "server.key",
        client_cert=d / "client.pem", client_key=d / "client.key", client_key_encrypted=d / "client.enc.key",
        other_key=d / "other.key", garbage=d / "garbage.pem",
    )


def make_settings(protocol: str, mechanism: str | None, pki: Pki, **extra: Any) -> Settings:
    fields: dict[str, Any] = {"bootstrap_servers": "broker-1:9093, broker-2:9093", "security_protocol": protocol}
    if protocol.startswith("SASL"):
        fields |= {"sasl_mechanism": mechanism, "sasl_username": "persona", "sasl_password": SASL_PASSWORD}
    if protocol in ("SSL", "SASL_SSL"):
        fields |= {
            "ssl_cafile": pki.ca,
            "ssl_certfile": pki.client_cert,
            "ssl_keyfile": pki.client_key_encrypted,
            "ssl_key_password": KEY_PASSWORD,
        }
    return Settings(**(fields | extra))


CASES = [
    ("PLAINTEXT", None),
    ("SSL", None),
    *[(p, m) for p in ("SASL_PLAINTEXT", "SASL_SSL") for m in ("PLAIN", "SCRAM-SHA-256", "SCRAM-SHA-512")],
]


def _faust_effective(creds: Any) -> tuple[dict[str, Any], dict[str, Any]]:
    """The aiokafka kwargs Faust's driver builds: (consumer auth, producer kwargs)."""
    app = faust.App("persona-test", broker="kafka://broker-1:9093", broker_credentials=creds)
    consumer = dict(credentials_to_aiokafka_auth(app.conf.broker_credentials, app.conf.ssl_context))
    producer: Any = app.producer  # faust.transport.drivers.aiokafka.Producer
    # As faust's aiokafka Producer._new_producer merges them:
    producer_kwargs = {**producer._settings_default(), **producer._settings_auth(), **producer._settings_extra()}
    return consumer, producer_kwargs


def _aiokafka_accepts(kwargs: dict[str, Any]) -> tuple[str, str | None, ssl.SSLContext | None]:
    """What a real (unstarted) AIOKafkaConsumer keeps of ``kwargs``."""

    async def build() -> tuple[str, str | None, ssl.SSLContext | None]:
        consumer = aiokafka.AIOKafkaConsumer(**kwargs, group_id=None, enable_auto_commit=False)
        client = consumer._client
        return client._security_protocol, client._sasl_mechanism if kwargs.get("sasl_mechanism") else None, client._ssl_context

    return asyncio.run(build())


@pytest.mark.parametrize(("protocol", "mechanism"), CASES)
def test_every_client_gets_the_same_security(protocol: str, mechanism: str | None, pki: Pki) -> None:
    s = make_settings(protocol, mechanism, pki)
    kafka_clients.validate(s)
    rd = kafka_clients.librdkafka(s)
    ak = kafka_clients.aiokafka(s)
    creds = kafka_clients.faust_credentials(s)
    f_consumer, f_producer = _faust_effective(creds)
    assert s.kafka_config() == rd  # the Settings method is the same builder

    assert rd["bootstrap.servers"] == "broker-1:9093, broker-2:9093"
    assert ak["bootstrap_servers"] == ["broker-1:9093", "broker-2:9093"]
    for conf in (ak, f_consumer, f_producer):
        assert conf["security_protocol"] == protocol
    assert rd["security.protocol"] == protocol
    assert _aiokafka_accepts(ak)[0] == protocol
    assert _aiokafka_accepts(f_consumer | {"bootstrap_servers": "broker-1:9093"})[0] == protocol

    if protocol.startswith("SASL"):
        assert isinstance(creds, faust.SASLCredentials)
        assert creds.protocol.value == protocol
        assert (rd["sasl.mechanism"], rd["sasl.username"], rd["sasl.password"]) == (mechanism, "persona", SASL_PASSWORD)
        for conf in (ak, f_consumer, f_producer):
            assert (conf["sasl_mechanism"], conf["sasl_plain_username"], conf["sasl_plain_password"]) == (
                mechanism, "persona", SASL_PASSWORD,
            )
        assert _aiokafka_accepts(ak)[1] == mechanism
    else:
        assert not any(k.startswith("sasl") for k in [*rd, *ak, *f_consumer, *f_producer])

    if protocol in ("SSL", "SASL_SSL"):
        if protocol == "SSL":
            assert isinstance(creds, faust.SSLCredentials)
            assert creds.protocol is AuthProtocol.SSL
        contexts = [ak["ssl_context"], f_consumer["ssl_context"], f_producer["ssl_context"], _aiokafka_accepts(ak)[2]]
        for ctx in contexts:
            assert isinstance(ctx, ssl.SSLContext)
            assert ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
            assert ctx.cert_store_stats()["x509_ca"] == 1  # our CA, not the system's
        assert rd["ssl.ca.location"] == str(pki.ca)
        assert rd["ssl.certificate.location"] == str(pki.client_cert)
        assert rd["ssl.key.location"] == str(pki.client_key_encrypted)
        assert rd["ssl.key.password"] == KEY_PASSWORD
        assert rd["ssl.endpoint.identification.algorithm"] == "https"
    else:
        assert "ssl_context" not in ak
        assert f_consumer.get("ssl_context") is None and f_producer.get("ssl_context") is None
        assert not any(k.startswith("ssl") for k in rd)
    if protocol == "PLAINTEXT":
        assert creds is None


def test_sasl_ssl_no_longer_loses_tls(pki: Pki) -> None:
    """The old worker passed ``SASLCredentials(ssl_context=None)``: Faust then spoke SASL_PLAINTEXT."""
    creds = kafka_clients.faust_credentials(make_settings("SASL_SSL", "SCRAM-SHA-256", pki))
    assert isinstance(creds, faust.SASLCredentials)
    assert creds.protocol is AuthProtocol.SASL_SSL and creds.ssl_context is not None
    old = faust.SASLCredentials(username="persona", password="x", mechanism="SCRAM-SHA-256", ssl_context=None)
    assert old.protocol is AuthProtocol.SASL_PLAINTEXT


def test_the_system_cas_without_a_cafile() -> None:
    ctx = kafka_clients.ssl_context(Settings(security_protocol="SSL"))
    assert ctx is not None and ctx.verify_mode is ssl.CERT_REQUIRED and ctx.check_hostname
    conf = kafka_clients.librdkafka(Settings(security_protocol="SSL"))
    assert "ssl.ca.location" not in conf and "ssl.certificate.location" not in conf
    assert kafka_clients.ssl_context(Settings()) is None


def test_hostname_check_can_be_turned_off(pki: Pki) -> None:
    s = make_settings("SSL", None, pki, ssl_check_hostname=False)
    ctx = kafka_clients.ssl_context(s)
    assert ctx is not None and not ctx.check_hostname and ctx.verify_mode is ssl.CERT_REQUIRED
    assert kafka_clients.librdkafka(s)["ssl.endpoint.identification.algorithm"] == "none"


def test_an_unencrypted_key_needs_no_password(pki: Pki) -> None:
    s = Settings(security_protocol="SSL", ssl_cafile=pki.ca, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key)
    kafka_clients.validate(s)
    assert "ssl.key.password" not in kafka_clients.librdkafka(s)


def test_confluent_kafka_accepts_the_config(pki: Pki) -> None:
    """librdkafka loads CA, certificate and (encrypted) key when the client is created."""
    confluent_kafka = pytest.importorskip("confluent_kafka")
    for protocol, mechanism in [("SSL", None), ("SASL_SSL", "SCRAM-SHA-512"), ("SASL_PLAINTEXT", "PLAIN")]:
        conf = make_settings(protocol, mechanism, pki, bootstrap_servers="127.0.0.1:1").kafka_config()
        confluent_kafka.Producer(conf | {"log_level": 0})  # raises KafkaException on a bad setting
    bad = make_settings("SSL", None, pki, bootstrap_servers="127.0.0.1:1").kafka_config() | {"ssl.key.password": "wrong"}
    with pytest.raises(confluent_kafka.KafkaException):
        confluent_kafka.Producer(bad | {"log_level": 0})


# --- the TLS context really authenticates both ends ---------------------------------------


def _tls_server(pki: Pki) -> tuple[socket.socket, threading.Thread, list[str]]:
    server_ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=pki.ca)
    server_ctx.load_cert_chain(pki.server_cert, pki.server_key)
    server_ctx.verify_mode = ssl.CERT_REQUIRED  # mutual TLS, like a broker with ssl.client.auth=required
    listener = socket.create_server(("127.0.0.1", 0))
    listener.settimeout(10)
    peers: list[str] = []

    def serve() -> None:
        for _ in range(2):
            try:
                conn, _ = listener.accept()
            except OSError:
                return
            try:
                with server_ctx.wrap_socket(conn, server_side=True) as tls:
                    cert = tls.getpeercert() or {}
                    subject: Any = cert.get("subject", ())
                    peers.extend(v for rdn in subject for k, v in rdn if k == "commonName")
                    tls.sendall(b"ok")
            except (ssl.SSLError, OSError):
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return listener, thread, peers


def test_the_context_does_mutual_tls(pki: Pki) -> None:
    listener, thread, peers = _tls_server(pki)
    port = listener.getsockname()[1]
    try:
        ctx = kafka_clients.ssl_context(make_settings("SASL_SSL", "PLAIN", pki))
        assert ctx is not None
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with ctx.wrap_socket(raw, server_hostname="localhost") as tls:
                assert tls.recv(2) == b"ok"
        # The broker's certificate does not name this host: refused while the check is on.
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with pytest.raises(ssl.SSLCertVerificationError):
                ctx.wrap_socket(raw, server_hostname="kafka.example.com")
        thread.join(10)
    finally:
        listener.close()
    assert peers[0] == "persona-worker"


# --- every client uses the module ------------------------------------------------------------


def test_the_replicas_connect_with_the_settings(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[dict[str, Any]] = []

    class Stop(Exception):
        pass

    class FakeConsumer:
        def __init__(self, **kwargs: Any) -> None:
            seen.append(kwargs)

        async def start(self) -> None:
            raise Stop

    monkeypatch.setattr(catalog_replica, "AIOKafkaConsumer", FakeConsumer)
    s = make_settings("SASL_SSL", "SCRAM-SHA-512", pki)
    for replica in (CatalogReplica(s, "items", 2, 65_536), VectorReplica(s, "items.vectors", 2)):
        with pytest.raises(Stop):
            asyncio.run(replica.run())
    assert len(seen) == 2
    for kwargs in seen:
        assert kwargs["security_protocol"] == "SASL_SSL"
        assert kwargs["sasl_mechanism"] == "SCRAM-SHA-512"
        assert kwargs["sasl_plain_username"] == "persona"
        assert isinstance(kwargs["ssl_context"], ssl.SSLContext)
        assert kwargs["group_id"] is None


# --- refusals --------------------------------------------------------------------------------


def _refused(s: Settings, match: str) -> str:
    for build in (kafka_clients.validate, kafka_clients.librdkafka, kafka_clients.aiokafka, kafka_clients.faust_credentials):
        with pytest.raises(ConfigError, match=match) as info:
            build(s)
    message = str(info.value)
    assert SASL_PASSWORD not in message and KEY_PASSWORD not in message
    return message


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_password_is_refused(protocol: str) -> None:
    s = Settings(security_protocol=protocol, sasl_username="persona")  # constructs (tests, `persona config`)
    _refused(s, "PERSONA_SASL_PASSWORD is required with a SASL security protocol")
    _refused(s.model_copy(update={"sasl_password": SecretStr("")}), "PERSONA_SASL_PASSWORD is required")


def test_sasl_without_username_is_refused() -> None:
    with pytest.raises(ConfigError, match="PERSONA_SASL_USERNAME is required"):
        Settings(security_protocol="SASL_SSL", sasl_password=SASL_PASSWORD)
    # A changed copy skips the model's validators; the clients check again.
    copy = Settings().model_copy(update={"security_protocol": "SASL_SSL"})
    _refused(copy, "PERSONA_SASL_USERNAME is required")


def test_a_mechanism_the_clients_cannot_serve_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PERSONA_SASL_USERNAME", "persona")
    monkeypatch.setenv("PERSONA_SASL_PASSWORD", SASL_PASSWORD)
    monkeypatch.setenv("PERSONA_SASL_MECHANISM", "GSSAPI")
    with pytest.raises(ValidationError, match="SCRAM-SHA-512"):
        Settings()
    monkeypatch.setenv("PERSONA_SASL_MECHANISM", "SCRAM-SHA-256")
    copy = Settings().model_copy(update={"sasl_mechanism": "OAUTHBEARER"})
    _refused(copy, r"PERSONA_SASL_MECHANISM=OAUTHBEARER cannot be served: .*PLAIN, SCRAM-SHA-256, SCRAM-SHA-512")


@pytest.mark.parametrize("protocol", ["PLAINTEXT", "SASL_PLAINTEXT"])
def test_tls_settings_without_tls_are_refused(protocol: str, pki: Pki) -> None:
    sasl: dict[str, Any] = {"sasl_username": "persona", "sasl_password": SASL_PASSWORD} if protocol.startswith("SASL") else {}
    with pytest.raises(ConfigError, match=f"PERSONA_SSL_CAFILE is set but PERSONA_SECURITY_PROTOCOL={protocol} does not use TLS"):
        Settings(security_protocol=protocol, ssl_cafile=pki.ca, **sasl)
    with pytest.raises(ConfigError, match="PERSONA_SSL_CERTFILE, PERSONA_SSL_KEYFILE are set .* does not use TLS"):
        Settings(security_protocol=protocol, ssl_certfile=pki.client_cert, ssl_keyfile=pki.client_key, **sasl)


def test_sasl_settings_without_sasl_are_refused() -> None:
    with pytest.raises(ConfigError, match="PERSONA_SASL_USERNAME, PERSONA_SASL_PASSWORD are set but .*=SSL does not use SASL"):
        Settings(security_protocol="SSL", sasl_username="persona", sasl_password=SASL_PASSWORD)


def test_half_a_client_certificate_is_refused(pki: Pki) -> None:
    with pytest.raises(ConfigError, match=r"PERSONA_SSL_CERTFILE \(client certificate\) needs PERSONA_SSL_KEYFILE"):
        Settings(security_protocol="SSL", ssl_certfile=pki.client_cert)
    with pytest.raises(ConfigError, match="PERSONA_SSL_KEYFILE needs PERSONA_SSL_CERTFILE"):
        Settings(security_protocol="SSL", ssl_keyfile=pki.client_key)
    with pytest.raises(ConfigError, match="PERSONA_SSL_KEY_PASSWORD is set but PERSONA_SSL_KEYFILE is not"):
        Settings(security_protocol="SSL", ssl_key_password=KEY_PASSWORD)


def test_missing_files_are_refused_at_start_not_at_construction(pki: Pki, tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    s = Settings(security_protocol="SSL", ssl_cafile=missing)  # settings still construct
    _refused(s, f"PERSONA_SSL_CAFILE={missing}: no such file")
    s = Settings(security_protocol="SASL_SSL", sasl_username="u", sasl_password=SASL_PASSWORD,
                 ssl_certfile=tmp_path, ssl_keyfile=missing)
    message = _refused(s, f"PERSONA_SSL_CERTFILE={tmp_path}: not a file")
    assert f"PERSONA_SSL_KEYFILE={missing}: no such file" in message  # every problem at once


def test_unloadable_tls_files_are_refused(pki: Pki) -> None:
    base: dict[str, Any] = {"security_protocol": "SSL", "ssl_cafile": pki.ca, "ssl_certfile": pki.client_cert}
    _refused(Settings(**base, ssl_keyfile=pki.client_key_encrypted),
             "PERSONA_SSL_KEYFILE=.* is encrypted: set PERSONA_SSL_KEY_PASSWORD")
    _refused(Settings(**base, ssl_keyfile=pki.client_key_encrypted, ssl_key_password="wrong-password"),
             "cannot load the client certificate and key")
    _refused(Settings(**base, ssl_keyfile=pki.other_key), "cannot load the client certificate and key")
    _refused(Settings(security_protocol="SSL", ssl_cafile=pki.garbage), "PERSONA_SSL_CAFILE=.*: not a usable CA file")


# --- secrets ---------------------------------------------------------------------------------


def test_masked_hides_every_password(pki: Pki) -> None:
    s = make_settings("SASL_SSL", "SCRAM-SHA-256", pki)
    assert isinstance(s.ssl_key_password, SecretStr) and isinstance(s.sasl_password, SecretStr)
    masked = s.masked()
    assert masked["sasl_password"] == "**********"
    assert masked["ssl_key_password"] == "**********"
    assert masked["ssl_cafile"] == str(pki.ca) and masked["ssl_check_hostname"] is True
    shown = json.dumps(masked) + repr(s) + str(s)
    assert SASL_PASSWORD not in shown and KEY_PASSWORD not in shown
    assert Settings().masked()["ssl_key_password"] is None


def test_new_settings_from_the_environment(pki: Pki, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_SECURITY_PROTOCOL", "SSL")
    monkeypatch.setenv("PERSONA_SSL_CAFILE", str(pki.ca))
    monkeypatch.setenv("PERSONA_SSL_CERTFILE", str(pki.client_cert))
    monkeypatch.setenv("PERSONA_SSL_KEYFILE", str(pki.client_key_encrypted))
    monkeypatch.setenv("PERSONA_SSL_KEY_PASSWORD", KEY_PASSWORD)
    monkeypatch.setenv("PERSONA_SSL_CHECK_HOSTNAME", "false")
    s = Settings()
    assert (s.ssl_cafile, s.ssl_certfile, s.ssl_keyfile) == (pki.ca, pki.client_cert, pki.client_key_encrypted)
    assert s.ssl_key_password is not None and s.ssl_key_password.get_secret_value() == KEY_PASSWORD
    assert s.ssl_check_hostname is False
    kafka_clients.validate(s)


class _Watermarks:
    """A consumer whose ``get_watermark_offsets`` answers each call from ``answers`` in turn."""

    def __init__(self, *answers: tuple[int, int] | int) -> None:
        self.answers = list(answers)
        self.calls = 0

    def get_watermark_offsets(self, tp: object, timeout: float) -> tuple[int, int]:
        from confluent_kafka import KafkaError, KafkaException

        assert timeout > 0
        self.calls += 1
        answer = self.answers.pop(0)
        if isinstance(answer, int):
            raise KafkaException(KafkaError(answer))
        return answer


def test_regression_not_leader_right_after_a_topic_was_created_failed_the_snapshot_job() -> None:
    """CI: `snapshot_job.take` raised NOT_LEADER_FOR_PARTITION from get_watermark_offsets on a
    deltas topic created a moment before; the broker's next answer would have been the offsets."""
    from confluent_kafka import KafkaError

    from stream_app.kafka_clients import watermarks

    consumer = _Watermarks(KafkaError.NOT_LEADER_FOR_PARTITION, KafkaError.LEADER_NOT_AVAILABLE, (3, 17))
    assert watermarks(consumer, "tp", 5.0) == (3, 17)
    assert consumer.calls == 3


def test_watermarks_raises_other_errors_at_once_and_transient_ones_at_the_deadline() -> None:
    from confluent_kafka import KafkaError, KafkaException

    from stream_app.kafka_clients import watermarks

    unknown = _Watermarks(KafkaError.UNKNOWN_TOPIC_OR_PART, (0, 1))
    with pytest.raises(KafkaException, match="UNKNOWN_TOPIC_OR_PART"):
        watermarks(unknown, "tp", 5.0)
    assert unknown.calls == 1  # a topic that does not exist is told at once
    stuck = _Watermarks(*[KafkaError.NOT_LEADER_FOR_PARTITION] * 100)
    with pytest.raises(KafkaException, match="NOT_LEADER_FOR_PARTITION"):
        watermarks(stuck, "tp", 0.3)
    assert 2 <= stuck.calls < 100  # asked again with backoff, then the last answer raised
