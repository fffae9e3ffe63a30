"""A static member leaves its group as it stops exactly when its StatefulSet no longer wants its pod;
every doubt (no answer, an error, an odd answer) keeps it in the group. The Kubernetes API is a
local HTTP server (deploy/kubernetes_api.py); the Kafka side is in tests/chaos/test_static_membership.py."""

from __future__ import annotations

import logging
import socket
from pathlib import Path
from typing import Any

import pytest

from deploy.kubernetes_api import StatefulSetApi
from state.errors import ConfigError
from stream_app.membership import Removal
from stream_app.scale_down import Api, KubernetesError, Pod, api_of, desired_replicas, leave_if_scaled_away, pod_of, scaled_away
from stream_app.settings import Settings

NS = "persona"


@pytest.fixture
def k8s() -> StatefulSetApi:
    with StatefulSetApi() as api:
        yield api  # type: ignore[misc]


def _settings(instance_id: str = "persona-worker-1", **overrides: Any) -> Settings:
    return Settings(group_instance_id=instance_id, static_leave="kubernetes", kubernetes_namespace=NS, **overrides)


class Remove:
    """Records what would be removed from the group, and answers as membership.leave does."""

    def __init__(self, fail: Exception | None = None) -> None:
        self.calls: list[list[str]] = []
        self.fail = fail

    def __call__(self, settings: Settings, instance_ids: list[str], timeout_s: float) -> list[Removal]:
        self.calls.append(instance_ids)
        if self.fail is not None:
            raise self.fail
        return [Removal(i, "removed") for i in instance_ids]


@pytest.mark.parametrize(
    ("name", "pod"),
    [
        ("persona-worker-0", Pod("persona-worker", 0)),
        ("persona-worker-12", Pod("persona-worker", 12)),
        ("w-7", Pod("w", 7)),
        ("a1-2-3", Pod("a1-2", 3)),
        ("persona-worker-03", None),  # Kubernetes never pads an ordinal
        ("persona-worker", None),
        ("worker-a", None),
        ("Persona-1", None),  # not a DNS label
        ("-1", None),
        ("persona-worker--1", None),
    ],
)
def test_pod_of_reads_a_statefulset_pod_name(name: str, pod: Pod | None) -> None:
    assert pod_of(name) == pod


def test_scaled_away_is_an_ordinal_at_or_above_the_replicas() -> None:
    # A StatefulSet of r replicas runs pods 0 .. r-1 (scaling down removes the highest first).
    for replicas in range(5):
        wanted = set(range(replicas))
        for ordinal in range(6):
            assert scaled_away(Pod("s", ordinal), replicas) == (ordinal not in wanted)


def test_desired_replicas_reads_spec_replicas_with_the_token(k8s: StatefulSetApi) -> None:
    k8s.token = "sekrit"
    k8s.replicas[(NS, "persona-worker")] = 3
    assert desired_replicas(Api(k8s.url, NS, "sekrit"), "persona-worker", 5.0) == 3
    assert k8s.requests == [("/apis/apps/v1/namespaces/persona/statefulsets/persona-worker", "Bearer sekrit")]
    with pytest.raises(KubernetesError, match="HTTP 401"):
        desired_replicas(Api(k8s.url, NS, "wrong"), "persona-worker", 5.0)


def test_desired_replicas_defaults_to_one_as_the_api_does(k8s: StatefulSetApi) -> None:
    k8s.replicas[(NS, "s")] = None
    assert desired_replicas(Api(k8s.url, NS), "s", 5.0) == 1


@pytest.mark.parametrize(
    ("status", "body", "match"),
    [
        (403, None, "HTTP 403"),  # no RBAC for statefulsets
        (None, b"<html>proxy error</html>", "JSONDecodeError"),
        (None, b'{"spec": {"replicas": "two"}}', "no spec.replicas"),
        (None, b'{"spec": {"replicas": -1}}', "no spec.replicas"),
        (None, b'{"spec": {"replicas": true}}', "no spec.replicas"),
        (None, b"[]", "no spec.replicas"),
    ],
)
def test_desired_replicas_says_what_was_wrong(k8s: StatefulSetApi, status: int | None, body: bytes | None, match: str) -> None:
    k8s.status, k8s.body = status, body
    with pytest.raises(KubernetesError, match=match):
        desired_replicas(Api(k8s.url, NS), "s", 5.0)


def test_desired_replicas_does_not_follow_a_redirect_with_the_token(k8s: StatefulSetApi) -> None:
    k8s.token = "sekrit"
    k8s.replicas[(NS, "s")] = 2
    with StatefulSetApi() as elsewhere:
        elsewhere.replicas[(NS, "s")] = 5
        k8s.redirect = elsewhere.url
        with pytest.raises(KubernetesError, match="HTTP 30"):
            desired_replicas(Api(k8s.url, NS, "sekrit"), "s", 5.0)
        assert elsewhere.requests == []


def test_desired_replicas_of_an_unknown_statefulset_is_an_error(k8s: StatefulSetApi) -> None:
    with pytest.raises(KubernetesError, match="HTTP 404"):
        desired_replicas(Api(k8s.url, NS), "nobody", 5.0)


def test_desired_replicas_unreachable_is_an_error() -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    with pytest.raises(KubernetesError, match="Connection refused|URLError"):
        desired_replicas(Api(f"http://127.0.0.1:{port}", NS), "s", 2.0)


def test_api_of_in_a_pod_uses_the_service_and_the_service_account(tmp_path: Path) -> None:
    (tmp_path / "token").write_text("tok\n")
    (tmp_path / "namespace").write_text("prod\n")
    (tmp_path / "ca.crt").write_text("not read here")
    settings = Settings(group_instance_id="persona-worker-0", static_leave="kubernetes")
    env = {"KUBERNETES_SERVICE_HOST": "10.0.0.1", "KUBERNETES_SERVICE_PORT": "6443"}
    assert api_of(settings, env, tmp_path) == Api("https://10.0.0.1:6443", "prod", "tok", tmp_path / "ca.crt")
    assert api_of(settings, {"KUBERNETES_SERVICE_HOST": "fd00::1"}, tmp_path).base_url == "https://[fd00::1]:443"
    # The settings win: another namespace, and another API without the CA. The token goes over
    # TLS only: a plain-HTTP API (kubectl proxy) authenticates by itself and never sees it.
    proxy = Settings(group_instance_id="persona-worker-0", static_leave="kubernetes",
                     kubernetes_api="http://127.0.0.1:8001/", kubernetes_namespace="staging")
    assert api_of(proxy, env, tmp_path) == Api("http://127.0.0.1:8001", "staging", None, None)
    tls = proxy.model_copy(update={"kubernetes_api": "https://api.example:6443"})
    assert api_of(tls, env, tmp_path) == Api("https://api.example:6443", "staging", "tok", None)


def test_api_of_outside_a_pod_says_what_is_missing(tmp_path: Path) -> None:
    with pytest.raises(KubernetesError, match="no namespace"):
        api_of(Settings(group_instance_id="persona-worker-0", static_leave="kubernetes"), {}, tmp_path)
    with pytest.raises(KubernetesError, match="not in a Kubernetes pod"):
        api_of(_settings(), {}, tmp_path)


def test_an_unreadable_service_account_stays_and_says_why(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """The account's files are read as the worker exits: an error there must not raise from it."""
    (tmp_path / "namespace").write_text("prod")
    (tmp_path / "token").write_text("tok")
    real = Path.read_text

    def refuse(self: Path, *args: Any, **kwargs: Any) -> str:
        if self.name == "token":
            raise PermissionError(13, "Permission denied", str(self))
        return real(self, *args, **kwargs)

    monkeypatch.setattr(Path, "read_text", refuse)
    monkeypatch.setattr("stream_app.scale_down.SERVICE_ACCOUNT", tmp_path)
    remove = Remove()
    with pytest.raises(KubernetesError, match="Permission denied"):
        api_of(_settings(), {"KUBERNETES_SERVICE_HOST": "10.0.0.1"}, tmp_path)
    with caplog.at_level(logging.WARNING, logger="stream_app.scale_down"):
        assert leave_if_scaled_away(Settings(group_instance_id="persona-worker-1", static_leave="kubernetes"), remove=remove) is None
    assert "Permission denied" in caplog.text and remove.calls == []


def test_a_pod_scaled_away_removes_its_own_instance_id(k8s: StatefulSetApi) -> None:
    k8s.replicas[(NS, "persona-worker")] = 1
    remove = Remove()
    removal = leave_if_scaled_away(_settings("persona-worker-1", kubernetes_api=k8s.url), remove=remove)
    assert removal == Removal("persona-worker-1", "removed")
    assert remove.calls == [["persona-worker-1"]]


@pytest.mark.parametrize("replicas", [2, 3])
def test_a_pod_still_wanted_stays_for_its_restart(k8s: StatefulSetApi, replicas: int) -> None:
    k8s.replicas[(NS, "persona-worker")] = replicas
    remove = Remove()
    assert leave_if_scaled_away(_settings("persona-worker-1", kubernetes_api=k8s.url), remove=remove) is None
    assert remove.calls == []
    assert len(k8s.requests) == 1


def test_a_scale_to_zero_removes_pod_zero(k8s: StatefulSetApi) -> None:
    k8s.replicas[(NS, "persona-worker")] = 0
    remove = Remove()
    assert leave_if_scaled_away(_settings("persona-worker-0", kubernetes_api=k8s.url), remove=remove) is not None
    assert remove.calls == [["persona-worker-0"]]


def test_any_doubt_stays_in_the_group(k8s: StatefulSetApi, caplog: pytest.LogCaptureFixture) -> None:
    remove = Remove()
    settings = _settings("persona-worker-1", kubernetes_api=k8s.url)
    k8s.status = 403
    with caplog.at_level(logging.WARNING, logger="stream_app.scale_down"):
        assert leave_if_scaled_away(settings, remove=remove) is None
    assert "HTTP 403" in caplog.text and "staying in group" in caplog.text
    k8s.status = None  # and the StatefulSet is not there at all (404)
    assert leave_if_scaled_away(settings, remove=remove) is None
    assert remove.calls == []


def test_a_failed_removal_is_logged_not_raised(k8s: StatefulSetApi, caplog: pytest.LogCaptureFixture) -> None:
    k8s.replicas[(NS, "persona-worker")] = 1
    remove = Remove(fail=OSError("broker gone"))
    with caplog.at_level(logging.WARNING, logger="stream_app.scale_down"):
        assert leave_if_scaled_away(_settings("persona-worker-1", kubernetes_api=k8s.url), remove=remove) is None
    assert remove.calls == [["persona-worker-1"]]
    assert "leaving group" in caplog.text and "broker gone" in caplog.text


def test_never_and_dynamic_members_do_not_ask(k8s: StatefulSetApi) -> None:
    k8s.replicas[(NS, "persona-worker")] = 0
    remove = Remove()
    never = Settings(group_instance_id="persona-worker-1", kubernetes_api=k8s.url, kubernetes_namespace=NS)
    assert never.static_leave == "never"
    assert leave_if_scaled_away(never, remove=remove) is None
    # model_copy skips validation: a dynamic member with the setting still does nothing.
    dynamic = never.model_copy(update={"static_leave": "kubernetes", "group_instance_id": None})
    assert leave_if_scaled_away(dynamic, remove=remove) is None
    assert k8s.requests == [] and remove.calls == []


def test_the_setting_is_refused_at_start_where_it_could_not_work() -> None:
    with pytest.raises(ConfigError, match="PERSONA_GROUP_INSTANCE_ID"):
        Settings(static_leave="kubernetes")
    with pytest.raises(ConfigError, match="not a StatefulSet pod's name"):
        Settings(static_leave="kubernetes", group_instance_id="worker-a")
    assert Settings(static_leave="kubernetes", group_instance_id="persona-worker-0").static_leave == "kubernetes"
    with pytest.raises(ValueError, match="kubernetes_api"):
        Settings(kubernetes_api="127.0.0.1:8001")  # a URL, with its scheme
