"""A static member that Kubernetes scaled away leaves its group as it stops.

A static member (``PERSONA_GROUP_INSTANCE_ID``) does not leave its group when it stops: a pod
that restarts gets its partitions back without a rebalance (``stream_app.membership``). On a
scale-down that is the wrong answer: the removed pod's partitions wait for its session to end
(19.8-27.4 s in ``persona bench scale``) unless somebody runs ``persona group leave``. A stopping
pod cannot tell the two apart from its SIGTERM, but the StatefulSet can: ``kubectl scale`` lowers
``spec.replicas`` first and then stops the pods whose ordinal is at or above it, while a restart,
a rolling update or a deleted pod keeps it. So with ``PERSONA_STATIC_LEAVE=kubernetes`` the
worker, once stopped (not when it restarts itself), reads its StatefulSet's ``spec.replicas``
from the Kubernetes API and removes its own instance id from the group when its ordinal is no
longer wanted. Anything that does not answer, or answers something else, keeps the old
behaviour: the worker stays a member and its session bounds the pause.

The pod's name is its instance id (``deploy/k8s`` sets one from the other): ``<statefulset>-<n>``.
The API is the in-cluster one (``KUBERNETES_SERVICE_HOST``/``_PORT``, the service account's
token, CA and namespace) unless ``PERSONA_KUBERNETES_API`` names another (``kubectl proxy``'s
``http://127.0.0.1:8001``, or a test's server; the token is sent to an ``https://`` one only). Reading a StatefulSet needs ``get`` on
``statefulsets`` in the namespace: the Role in ``deploy/k8s/worker-rbac.yaml``.
"""

from __future__ import annotations

import json
import logging
import os
import re
import ssl
import urllib.error
import urllib.request
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from state.errors import PersonaError

if TYPE_CHECKING:
    from stream_app.membership import Removal
    from stream_app.settings import Settings

log = logging.getLogger(__name__)

#: Where Kubernetes mounts a pod's service account credentials.
SERVICE_ACCOUNT = Path("/var/run/secrets/kubernetes.io/serviceaccount")
_POD = re.compile(r"^(?P<statefulset>[a-z0-9]([-a-z0-9]*[a-z0-9])?)-(?P<ordinal>0|[1-9][0-9]*)$")


class KubernetesError(PersonaError):
    """The Kubernetes API could not say whether this pod is still wanted."""


@dataclass(frozen=True)
class Pod:
    """A StatefulSet's pod: ``<statefulset>-<ordinal>``."""

    statefulset: str
    ordinal: int


def pod_of(name: str) -> Pod | None:
    """The StatefulSet and ordinal a pod name spells, None when it is not a StatefulSet pod's name."""
    m = _POD.match(name)
    return None if m is None else Pod(m.group("statefulset"), int(m.group("ordinal")))


def scaled_away(pod: Pod, replicas: int) -> bool:
    """Whether the StatefulSet no longer wants ``pod``: it keeps ordinals ``0 .. replicas - 1``."""
    return pod.ordinal >= replicas


@dataclass(frozen=True)
class Api:
    """Where and how to ask the Kubernetes API."""

    base_url: str
    namespace: str
    token: str | None = None
    ca_file: Path | None = None


def api_of(settings: Settings, env: dict[str, str] | None = None, account: Path | None = None) -> Api:
    """The API to ask: ``settings.kubernetes_api`` when set, else the in-cluster service's (the
    environment Kubernetes gives every pod); the namespace from the settings, else the service
    account's. Raises :class:`KubernetesError` when there is no API to ask."""
    env = dict(os.environ) if env is None else env
    account = SERVICE_ACCOUNT if account is None else account

    def read(name: str) -> str | None:
        path = account / name
        try:
            return path.read_text(encoding="utf-8").strip() if path.is_file() else None
        except (OSError, UnicodeDecodeError) as exc:  # a mount the worker's user may not read
            raise KubernetesError(f"{path}: {exc!r}") from exc

    namespace = settings.kubernetes_namespace or read("namespace")
    if not namespace:
        raise KubernetesError(f"no namespace: set PERSONA_KUBERNETES_NAMESPACE or run in a pod ({account}/namespace)")
    token = read("token")
    if settings.kubernetes_api:
        url = settings.kubernetes_api.rstrip("/")
        # The service account's token goes over TLS only: a plain-HTTP API is a local proxy
        # (kubectl proxy) that authenticates by itself, and must not see it in clear text.
        return Api(url, namespace, token if url.startswith("https://") else None)
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    if not host:
        raise KubernetesError("not in a Kubernetes pod (no KUBERNETES_SERVICE_HOST) and no PERSONA_KUBERNETES_API")
    ca = account / "ca.crt"
    host = f"[{host}]" if ":" in host else host  # an IPv6 service address
    return Api(f"https://{host}:{port}", namespace, token, ca if ca.is_file() else None)


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    def redirect_request(self, *args: Any, **kwargs: Any) -> None:
        return None  # the 3xx is then raised as an HTTPError


def desired_replicas(api: Api, statefulset: str, timeout_s: float) -> int:
    """The StatefulSet's ``spec.replicas`` (1 when unset: the API's default)."""
    url = f"{api.base_url}/apis/apps/v1/namespaces/{api.namespace}/statefulsets/{statefulset}"
    request = urllib.request.Request(url, headers={"Accept": "application/json"})
    if api.token:
        request.add_header("Authorization", f"Bearer {api.token}")
    context = ssl.create_default_context(cafile=str(api.ca_file)) if api.ca_file else ssl.create_default_context()
    # No redirects: urllib would carry the bearer token to wherever one points.
    opener = urllib.request.build_opener(urllib.request.HTTPSHandler(context=context), _NoRedirect())
    try:
        with opener.open(request, timeout=timeout_s) as response:
            body = json.load(response)
    except urllib.error.HTTPError as exc:
        raise KubernetesError(f"GET {url}: HTTP {exc.code} {exc.reason}") from exc
    except (OSError, ValueError) as exc:  # unreachable, timed out, TLS refused, not JSON
        raise KubernetesError(f"GET {url}: {exc!r}") from exc
    spec = body.get("spec") if isinstance(body, dict) else None
    replicas = spec.get("replicas", 1) if isinstance(spec, dict) else None
    if not isinstance(replicas, int) or isinstance(replicas, bool) or replicas < 0:
        raise KubernetesError(f"GET {url}: no spec.replicas in the answer")
    return replicas


def leave_if_scaled_away(
    settings: Settings,
    timeout_s: float = 5.0,
    *,
    api: Api | None = None,
    remove: Callable[[Settings, list[str], float], list[Removal]] | None = None,
) -> Removal | None:
    """After the worker stopped for good: with ``PERSONA_STATIC_LEAVE=kubernetes``, a static
    member whose pod the StatefulSet no longer wants removes itself from the group (module
    docstring). Returns the removal, None when it stayed. Best effort, each step bounded by
    ``timeout_s``: it never raises, and it logs why it stayed or what it did. ``api`` and
    ``remove`` (``membership.leave``) are for tests."""
    instance_id = settings.group_instance_id
    if settings.static_leave != "kubernetes" or not instance_id:
        return None
    pod = pod_of(instance_id)
    if pod is None:
        log.warning("PERSONA_STATIC_LEAVE=kubernetes, but the instance id %r is not a StatefulSet pod's name "
                    "(<statefulset>-<ordinal>): staying in the group", instance_id)
        return None
    try:
        replicas = desired_replicas(api or api_of(settings), pod.statefulset, timeout_s)
    except KubernetesError as exc:
        log.warning("could not learn whether pod %s was scaled away (%s): staying in group %r, whose "
                    "session ends in %.0f s", instance_id, exc, settings.app_id, settings.session_timeout_s)
        return None
    if not scaled_away(pod, replicas):
        log.info("pod %s is still wanted (statefulset %s: %d replicas): staying a member of group %r "
                 "(a restarted pod takes its partitions back)", instance_id, pod.statefulset, replicas, settings.app_id)
        return None
    if remove is None:
        from stream_app.membership import leave

        remove = leave
    try:
        (removal,) = remove(settings, [instance_id], timeout_s)
    except Exception as exc:  # noqa: BLE001  the process is exiting: say it, never raise from here
        log.warning("pod %s was scaled away (statefulset %s: %d replicas) but leaving group %r failed (%r): "
                    "its partitions wait for its session to end", instance_id, pod.statefulset, replicas, settings.app_id, exc)
        return None
    log.warning("pod %s was scaled away (statefulset %s: %d replicas): instance %s %s from group %r, so its "
                "partitions move now, not after the %.0f s session timeout", instance_id, pod.statefulset, replicas,
                removal.instance_id, removal.outcome, settings.app_id, settings.session_timeout_s)
    return removal
