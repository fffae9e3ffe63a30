"""A secured local broker: SASL_SSL with SCRAM-SHA-512, TLS client authentication, ACLs.

:func:`make_pki` makes a throwaway CA, the broker's certificate (for 127.0.0.1 and localhost)
and one client certificate per principal with ``openssl`` (tests and ``persona kafka up
--secure`` use it; a real cluster brings its own). :class:`BrokerSecurity` is what
:func:`deploy.kafka.launcher.start` needs to start the broker that way:

- one client listener, ``SASL_SSL``: TLS with a client certificate *required* (mutual TLS),
  then SCRAM-SHA-512; the principal is the SCRAM user;
- the KRaft controller listener on ``SSL`` with client certificates required too, so nothing
  on the loopback reaches the controller without a certificate the CA signed;
- ``StandardAuthorizer`` with no access unless an ACL grants it; super users: the admin SCRAM
  user and the broker's own certificate (its controller connection).

The admin's SCRAM credential is written at format time (the broker itself signs in with it);
other users are added through the Admin API (:func:`add_scram_user`), as on a real cluster.
"""

from __future__ import annotations

import os
import secrets
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from state.errors import BrokerError

MECHANISM = "SCRAM-SHA-512"
BROKER_CN = "persona-broker"


@dataclass(frozen=True)
class Pki:
    """PEM files: the CA, the broker's PKCS#12 keystore, and a certificate and key per client."""

    dir: Path
    ca: Path
    broker_keystore: Path
    keystore_password: str = field(repr=False)
    clients: dict[str, tuple[Path, Path]]

    def client(self, name: str) -> tuple[Path, Path]:
        return self.clients[name]


def _openssl(*args: str, cwd: Path) -> None:
    proc = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise BrokerError(f"openssl {' '.join(args[:2])} failed: {proc.stderr.strip()}")


def _signed(dir: Path, name: str, cn: str, ext: str) -> tuple[Path, Path]:
    key, csr, cert, extfile = dir / f"{name}.key", dir / f"{name}.csr", dir / f"{name}.pem", dir / f"{name}.ext"
    _openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", key.name, "-out", csr.name, "-subj", f"/CN={cn}", cwd=dir)
    extfile.write_text(ext)
    _openssl("x509", "-req", "-in", csr.name, "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", cert.name, "-days", "30", "-extfile", extfile.name, cwd=dir)
    key.chmod(0o600)
    return cert, key


def make_pki(dir: Path, clients: tuple[str, ...] = ("admin", "persona-worker")) -> Pki:
    """A CA, the broker's keystore and a client certificate (CN = the name) per client."""
    dir.mkdir(parents=True, exist_ok=True)
    _openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem",
             "-days", "30", "-subj", "/CN=persona-test-ca", cwd=dir)
    (dir / "ca.key").chmod(0o600)
    broker_cert, broker_key = _signed(
        dir, "broker", BROKER_CN, "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth,clientAuth\n"
    )
    password = secrets.token_urlsafe(18)
    keystore = dir / "broker.p12"
    _openssl("pkcs12", "-export", "-in", broker_cert.name, "-inkey", broker_key.name, "-certfile", "ca.pem",
             "-name", "broker", "-out", keystore.name, "-passout", f"pass:{password}", cwd=dir)
    keystore.chmod(0o600)
    made = {name: _signed(dir, f"client-{name}", name, "extendedKeyUsage=clientAuth\n") for name in clients}
    return Pki(dir=dir, ca=dir / "ca.pem", broker_keystore=keystore, keystore_password=password, clients=made)


@dataclass(frozen=True)
class BrokerSecurity:
    """How :func:`deploy.kafka.launcher.start` secures the broker (module docstring)."""

    pki: Pki
    admin_user: str = "admin"
    admin_password: str = field(default_factory=lambda: secrets.token_urlsafe(18), repr=False)

    def server_properties(self, port: int, cport: int, host: str) -> dict[str, str]:
        jaas = (f'org.apache.kafka.common.security.scram.ScramLoginModule required username="{self.admin_user}" '
                f'password="{self.admin_password}";')
        return {
            "listeners": f"SASL_SSL://{host}:{port},CONTROLLER://{host}:{cport}",
            "advertised.listeners": f"SASL_SSL://{host}:{port}",
            "listener.security.protocol.map": "SASL_SSL:SASL_SSL,CONTROLLER:SSL",
            "inter.broker.listener.name": "SASL_SSL",
            "sasl.enabled.mechanisms": MECHANISM,
            "sasl.mechanism.inter.broker.protocol": MECHANISM,
            "listener.name.sasl_ssl.scram-sha-512.sasl.jaas.config": jaas,
            "ssl.keystore.type": "PKCS12",
            "ssl.keystore.location": str(self.pki.broker_keystore),
            "ssl.keystore.password": self.pki.keystore_password,
            "ssl.key.password": self.pki.keystore_password,
            "ssl.truststore.type": "PEM",
            "ssl.truststore.location": str(self.pki.ca),
            "ssl.client.auth": "required",
            # KIP-684: on a SASL_SSL listener the unprefixed ssl.client.auth is ignored; only the
            # listener-prefixed one makes the client certificate required (a test caught this).
            "listener.name.sasl_ssl.ssl.client.auth": "required",
            "authorizer.class.name": "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found": "false",
            "super.users": f"User:{self.admin_user};User:CN={BROKER_CN}",
        }

    def format_args(self) -> list[str]:
        """``kafka-storage format`` arguments that create the admin's SCRAM credential."""
        return ["--add-scram", f"{MECHANISM}=[name={self.admin_user},password={self.admin_password}]"]

    def admin_config(self, bootstrap: str) -> dict[str, Any]:
        """librdkafka settings of the admin principal (readiness checks, users, ACLs)."""
        cert, key = self.pki.client(self.admin_user)
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanism": MECHANISM,
            "sasl.username": self.admin_user,
            "sasl.password": self.admin_password,
            "ssl.ca.location": str(self.pki.ca),
            "ssl.certificate.location": str(cert),
            "ssl.key.location": str(key),
        }


def add_scram_user(admin_conf: dict[str, Any], user: str, password: str) -> None:
    """Create (or reset) a SCRAM-SHA-512 user through the Admin API."""
    from confluent_kafka.admin import (  # type: ignore[attr-defined]
        AdminClient,
        ScramCredentialInfo,
        ScramMechanism,
        UserScramCredentialUpsertion,
    )

    admin = AdminClient(admin_conf)
    info = ScramCredentialInfo(ScramMechanism.SCRAM_SHA_512, 8192)
    upsert = UserScramCredentialUpsertion(user, info, password.encode(), os.urandom(16))
    for fut in admin.alter_user_scram_credentials([upsert]).values():
        fut.result(timeout=30)
