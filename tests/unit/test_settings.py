"""Settings: PERSONA_ environment, frozen model, secrets, topics and the README table."""

from __future__ import annotations

import os
import re
from collections.abc import Iterator
from pathlib import Path

import pytest
from pydantic import SecretStr, ValidationError

from state.errors import ConfigError
from state.events import EVENT_KINDS
from stream_app.settings import Settings, markdown_table


@pytest.fixture(autouse=True)
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for name in list(os.environ):
        if name.upper().startswith("PERSONA_"):
            monkeypatch.delenv(name)
    yield


def test_env_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_TOP_K", "7")
    monkeypatch.setenv("PERSONA_TOPIC_PREFIX", "acme.")
    monkeypatch.setenv("PERSONA_HALF_LIFE_DAYS", "2.5")
    monkeypatch.setenv("PERSONA_STATE_DIR", "/tmp/persona-x")
    monkeypatch.setenv("TOP_K", "99")  # no prefix: ignored
    s = Settings()
    assert s.top_k == 7
    assert s.topic_prefix == "acme."
    assert s.half_life_days == 2.5
    assert s.state_dir == Path("/tmp/persona-x")


def test_defaults_without_env() -> None:
    s = Settings()
    assert (s.top_k, s.topic_prefix, s.partitions, s.dedupe_window) == (10, "persona.", 4, 32)
    assert s.security_protocol == "PLAINTEXT"


def test_invalid_env_value_is_rejected(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_TOP_K", "0")
    with pytest.raises(ValidationError):
        Settings()


def test_frozen() -> None:
    s = Settings()
    with pytest.raises(ValidationError):
        s.top_k = 3  # type: ignore[misc]
    assert s.top_k == 10
    # A changed copy is the way to vary settings.
    assert s.model_copy(update={"top_k": 3}).top_k == 3


def test_masked_hides_secrets(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("PERSONA_SECURITY_PROTOCOL", "SASL_SSL")
    monkeypatch.setenv("PERSONA_SASL_USERNAME", "alice")
    monkeypatch.setenv("PERSONA_SASL_PASSWORD", "hunter2-very-secret")
    s = Settings()
    assert isinstance(s.sasl_password, SecretStr)
    masked = s.masked()
    assert masked["sasl_password"] == "**********"
    assert masked["sasl_username"] == "alice"
    assert "hunter2-very-secret" not in repr(masked)
    assert "hunter2-very-secret" not in repr(s)
    assert set(masked) == set(Settings.model_fields)
    assert isinstance(masked["state_dir"], str)
    # The real value is still there for the client.
    conf = s.kafka_config()
    assert conf["sasl.password"] == "hunter2-very-secret"
    assert conf["sasl.username"] == "alice"
    assert conf["security.protocol"] == "SASL_SSL"


def test_masked_without_password() -> None:
    assert Settings().masked()["sasl_password"] is None
    assert "sasl.password" not in Settings().kafka_config()


@pytest.mark.parametrize("protocol", ["SASL_PLAINTEXT", "SASL_SSL"])
def test_sasl_without_user_raises(protocol: str) -> None:
    with pytest.raises(ConfigError):
        Settings(security_protocol=protocol)
    with pytest.raises(ConfigError):
        Settings(security_protocol=protocol, sasl_username="")
    assert Settings(security_protocol=protocol, sasl_username="bob").sasl_username == "bob"


def test_ssl_needs_no_user() -> None:
    assert Settings(security_protocol="SSL").security_protocol == "SSL"


def test_topic_names() -> None:
    s = Settings(topic_prefix="t1.", partitions=6, item_partitions=2)
    assert [s.topic(k) for k in EVENT_KINDS] == [
        "t1.clicks", "t1.purchases", "t1.reviews", "t1.follows", "t1.items", "t1.users", "t1.impressions", "t1.erasures",
    ]
    assert s.recommendations_topic == "t1.recommendations"
    assert s.partitions_for("item") == 2
    assert all(s.partitions_for(k) == 6 for k in EVENT_KINDS if k != "item")
    assert Settings().topic("click") == "persona.clicks"


def test_markdown_table_lists_every_field() -> None:
    table = markdown_table()
    lines = table.splitlines()
    assert lines[0] == "| env var | default | meaning |"
    rows = lines[2:]
    assert len(rows) == len(Settings.model_fields)
    names = [re.match(r"\| `PERSONA_([A-Z0-9_]+)` \|", row) for row in rows]
    assert all(m is not None for m in names), rows
    assert [m.group(1).lower() for m in names if m is not None] == list(Settings.model_fields)
    for row, (name, field) in zip(rows, Settings.model_fields.items(), strict=True):
        assert field.description and row.endswith(f"| {field.description} |"), name
    # Paths are shown relative to the repository, never as this machine's absolute path.
    assert str(Path(__file__).resolve().parents[2]) not in table
    assert "`<repo>/var/persona`" in table
    assert "`<repo>/../shared/data`" in table


def test_regression_the_readme_settings_table_drifted_from_the_model() -> None:
    """The README's table is `persona config --markdown`, row for row: one row had been edited
    by hand and no longer matched the field's description (PERSONA_GROUP_INSTANCE_ID)."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text(encoding="utf-8").splitlines()
    generated = markdown_table().splitlines()
    start = readme.index(generated[0])
    documented = readme[start : start + len(generated)]
    assert documented == generated, [row[:80] for row in set(generated) ^ set(documented)]
    # No other table names a setting the model does not have.
    assert sum(line.startswith("| `PERSONA_") for line in readme) == len(Settings.model_fields)


def test_regression_settings_env_round_trips_dict_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    """A worker started by the harness got `PERSONA_EVENT_WEIGHTS={'click': 1.0, ...}` (a Python
    repr) and refused to start: every setting must survive the trip through the environment."""
    from deploy.workers import settings_env
    from stream_app.settings import Settings

    original = Settings(event_weights={"click": 0.5, "purchase": 3.0, "review": 2.0}, rating_weights={1: 0.0}, top_k=7)
    for key, value in settings_env(original).items():
        monkeypatch.setenv(key, value)
    assert Settings() == original
