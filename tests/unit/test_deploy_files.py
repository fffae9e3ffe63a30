"""The deploy files: the compose file against the Compose specification's JSON schema, the
Kubernetes manifests against the Kubernetes API schemas, and the facts that tie the files to
each other and to ``stream_app.settings.Settings``.

Both schemas are read offline from PyPI packages (the ``test`` extra): the Compose
specification's ``compose-spec.json`` as vendored by ``check-jsonschema``, and the Kubernetes
OpenAPI-derived JSON schemas shipped by ``kubernetes-validate``. Nothing here needs Docker, a
cluster or the network; nothing here runs the containers either.
"""

from __future__ import annotations

import copy
import json
import os
import re
from collections.abc import Iterator
from importlib import metadata
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from stream_app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
DEPLOY = REPO / "deploy"
COMPOSE = DEPLOY / "docker-compose.yml"
DOCKERFILE = DEPLOY / "Dockerfile"
PROMETHEUS_COMPOSE = DEPLOY / "prometheus" / "prometheus-compose.yml"
K8S = DEPLOY / "k8s"
KUSTOMIZATION = K8S / "kustomization.yaml"
# Written by other hands: the compose file mounts them, this file does not require them.
NOT_OURS = (DEPLOY / "prometheus" / "alerts.yml", DEPLOY / "grafana")

COMPOSE_SCHEMA = "check_jsonschema/builtin_schemas/vendor/compose-spec.json"
PREFIX = "PERSONA_"
WORKER_SERVICES = ("worker-1", "worker-2")


# --- loading -------------------------------------------------------------------------------


def _yaml(path: Path) -> dict[str, Any]:
    data = yaml.safe_load(path.read_text(encoding="utf-8"))
    assert isinstance(data, dict), f"{path}: not a YAML mapping"
    return data


def _compose() -> dict[str, Any]:
    return _yaml(COMPOSE)


def _manifest_files() -> list[Path]:
    return sorted(p for p in K8S.glob("*.yaml") if p != KUSTOMIZATION)


def _manifests() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for path in _manifest_files():
        for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")):
            if doc:
                assert isinstance(doc, dict), f"{path}: a document that is not a mapping"
                docs.append(doc)
    return docs


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _manifests() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


def _config() -> dict[str, str]:
    data = _one("ConfigMap")["data"]
    assert isinstance(data, dict)
    return {str(k): str(v) for k, v in data.items()}


def _statefulset() -> dict[str, Any]:
    return _one("StatefulSet")


def _worker_container() -> dict[str, Any]:
    containers = _statefulset()["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    container = containers[0]
    assert isinstance(container, dict)
    return container


def _http_port(container: dict[str, Any]) -> tuple[str, int]:
    ports = container["ports"]
    assert len(ports) == 1, "the worker serves one web port"
    return str(ports[0]["name"]), int(ports[0]["containerPort"])


def _split_volume(spec: str) -> tuple[str, str]:
    """(source, target) of a short-syntax compose volume; the source may be ``${VAR:-default}``."""
    if spec.startswith("${"):
        end = spec.index("}") + 1
        source, rest = spec[:end], spec[end + 1 :]
    else:
        source, _, rest = spec.partition(":")
    return source, rest.split(":")[0]


def _is_bind(source: str) -> bool:
    return source.startswith((".", "/", "~", "${"))


def _host_path(source: str) -> Path:
    """A bind mount's source on the host, with ``${VAR:-default}`` read as its default."""
    plain = re.sub(r"\$\{[A-Za-z_][A-Za-z0-9_]*:?-([^}]*)\}", r"\1", source)
    return (DEPLOY / os.path.expanduser(plain)).resolve()


def _env_names(env: Any) -> set[str]:
    """Variable names of a compose ``environment`` (a mapping or a list of NAME=VALUE)."""
    if isinstance(env, dict):
        return {str(k) for k in env}
    if isinstance(env, list):
        return {str(item).split("=", 1)[0] for item in env}
    return set()


def _dockerfile_stages() -> dict[str, list[str]]:
    """Each named stage's instructions (continuation lines joined), by stage name."""
    stages: dict[str, list[str]] = {}
    current: list[str] | None = None
    text = DOCKERFILE.read_text(encoding="utf-8").replace("\\\n", " ")
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = re.match(r"FROM\s+(\S+)(?:\s+AS\s+(\S+))?", line, re.IGNORECASE)
        if match:
            current = [line]
            stages[match.group(2) or match.group(1)] = current
        elif current is not None:
            current.append(line)
    return stages


@pytest.fixture
def clean_env(monkeypatch: pytest.MonkeyPatch) -> Iterator[pytest.MonkeyPatch]:
    for name in list(os.environ):
        if name.upper().startswith(PREFIX):
            monkeypatch.delenv(name)
    yield monkeypatch


# --- the compose file against the Compose specification ------------------------------------


def _compose_schema() -> dict[str, Any]:
    # Read as a data file of the installed distribution, without importing check_jsonschema:
    # its package imports its click CLI, and the worker environment's click (< 8.4, pinned by
    # faust-streaming) is older than the one its CLI is written for.
    try:
        path = metadata.distribution("check-jsonschema").locate_file(COMPOSE_SCHEMA)
    except metadata.PackageNotFoundError:
        pytest.skip("check-jsonschema (ships the Compose specification's JSON schema) is not installed: pip install -e .[test]")
    schema = json.loads(Path(str(path)).read_text(encoding="utf-8"))
    assert isinstance(schema, dict)
    return schema


def _compose_errors(document: dict[str, Any]) -> list[str]:
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed: pip install -e .[test]")
    schema = _compose_schema()
    validator = jsonschema.validators.validator_for(schema)(schema)
    return sorted(f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}" for e in validator.iter_errors(document))


def test_compose_file_matches_the_compose_specification() -> None:
    schema = _compose_schema()
    assert schema["title"] == "Compose Specification"
    errors = _compose_errors(_compose())
    assert not errors, "deploy/docker-compose.yml against compose-spec.json:\n" + "\n".join(errors)


def test_compose_schema_catches_a_mistake() -> None:
    # The check above is worth something only if the schema refuses what Compose refuses.
    broken = copy.deepcopy(_compose())
    broken["services"]["worker-1"]["healthchek"] = broken["services"]["worker-1"].pop("healthcheck")
    broken["services"]["kafka"]["ports"] = "9094:9094"
    errors = _compose_errors(broken)
    assert any("healthchek" in e for e in errors), errors
    assert any(e.startswith("services/kafka/ports") for e in errors), errors


# --- the Kubernetes manifests against the Kubernetes API schemas ----------------------------

CRD_KINDS = {"ServiceMonitor"}  # not in the Kubernetes API: checked by its own test below


def _k8s_errors(doc: dict[str, Any], version: str) -> str | None:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (ships the Kubernetes JSON schemas) is not installed: pip install -e .[test]"
    )
    try:
        kv.validate(doc, version, strict=True)
    except kv.ValidationError as exc:
        return f"{doc['kind']}/{doc['metadata']['name']} {'.'.join(map(str, exc.path))}: {exc.message}"
    return None


def _k8s_versions() -> list[str]:
    kv = pytest.importorskip(
        "kubernetes_validate", reason="kubernetes-validate (ships the Kubernetes JSON schemas) is not installed: pip install -e .[test]"
    )
    versions = [str(v) for v in kv.utils.all_versions()]
    return [versions[0], versions[-1]]  # the oldest and the newest it carries


def test_k8s_manifests_match_the_kubernetes_api_schema() -> None:
    docs = [d for d in _manifests() if d["kind"] not in CRD_KINDS]
    assert {d["kind"] for d in docs} >= {
        "Namespace", "ConfigMap", "Secret", "PersistentVolumeClaim", "Service", "StatefulSet", "PodDisruptionBudget", "CronJob",
    }
    errors = [e for v in _k8s_versions() for d in docs if (e := _k8s_errors(d, v)) is not None]
    assert not errors, "\n".join(errors)


def test_k8s_schema_catches_a_mistake() -> None:
    broken = copy.deepcopy(_statefulset())
    broken["spec"]["template"]["spec"]["containers"][0]["readinesProbe"] = {"httpGet": {"path": "/ready", "port": "http"}}
    assert _k8s_errors(broken, _k8s_versions()[-1]) is not None


def test_servicemonitor_is_well_formed_and_scrapes_the_worker_service() -> None:
    # A CRD (Prometheus Operator): no schema ships with kubernetes-validate, so its shape is
    # checked here against the fields of monitoring.coreos.com/v1 it uses.
    monitor = _one("ServiceMonitor")
    service = _one("Service", "persona-worker")
    assert monitor["apiVersion"] == "monitoring.coreos.com/v1"
    assert set(monitor) == {"apiVersion", "kind", "metadata", "spec"}
    assert monitor["metadata"]["namespace"] == service["metadata"]["namespace"]
    spec = monitor["spec"]
    assert set(spec) <= {"selector", "namespaceSelector", "endpoints", "jobLabel", "targetLabels", "podTargetLabels", "sampleLimit"}
    assert spec["namespaceSelector"]["matchNames"] == [service["metadata"]["namespace"]]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= service["metadata"]["labels"].items(), "the ServiceMonitor selects the Service by its labels"
    assert spec["endpoints"], "at least one endpoint"
    port_names = {p["name"] for p in service["spec"]["ports"]}
    for endpoint in spec["endpoints"]:
        assert set(endpoint) <= {"port", "path", "interval", "scrapeTimeout", "scheme", "honorLabels", "relabelings", "metricRelabelings"}
        assert endpoint["port"] in port_names, "endpoints name a port of the Service"
        assert endpoint["path"] == "/metrics"
        assert re.fullmatch(r"\d+[smh]", endpoint["interval"])


def test_kustomization_lists_every_manifest_in_one_namespace() -> None:
    kustomization = _yaml(KUSTOMIZATION)
    assert kustomization["apiVersion"] == "kustomize.config.k8s.io/v1beta1"
    assert kustomization["kind"] == "Kustomization"
    assert sorted(kustomization["resources"]) == sorted(p.name for p in _manifest_files())
    namespace = _one("Namespace")["metadata"]["name"]
    assert kustomization["namespace"] == namespace
    for doc in _manifests():
        if doc["kind"] != "Namespace":
            assert doc["metadata"].get("namespace") == namespace, f"{doc['kind']}/{doc['metadata']['name']}"
    images = {i["name"] for i in kustomization["images"]}
    used = {c["image"].split(":")[0] for c in _all_containers()}
    assert used <= images, "every container image can be set from kustomization.yaml"


def _all_containers() -> list[dict[str, Any]]:
    containers: list[dict[str, Any]] = list(_statefulset()["spec"]["template"]["spec"]["containers"])
    for name in ("persona-trainer", "persona-shared-snapshot"):
        containers += _one("CronJob", name)["spec"]["jobTemplate"]["spec"]["template"]["spec"]["containers"]
    return containers


# --- PERSONA_* variables against Settings ----------------------------------------------------


def _persona_names() -> dict[str, set[str]]:
    """Every PERSONA_* variable the deploy files set, with where."""
    where: dict[str, set[str]] = {}

    def add(names: set[str], origin: str) -> None:
        for name in names:
            if name.startswith(PREFIX):
                where.setdefault(name, set()).add(origin)

    compose = _compose()
    for service, spec in compose["services"].items():
        add(_env_names(spec.get("environment")), f"compose {service}")
    for key, value in compose.items():
        if key.startswith("x-") and isinstance(value, dict):
            add({str(k) for k in value}, f"compose {key}")
    add(set(_config()), "ConfigMap")
    add(set(_one("Secret")["stringData"]), "Secret")
    for container in _all_containers():
        add({e["name"] for e in container.get("env", [])}, f"k8s container {container['name']}")
    for stage, lines in _dockerfile_stages().items():
        for line in lines:
            if line.upper().startswith("ENV "):
                add(set(re.findall(r"\b(" + PREFIX + r"[A-Z0-9_]+)=", line)), f"Dockerfile {stage}")
    return where


def test_every_persona_variable_is_a_settings_field() -> None:
    names = _persona_names()
    assert {"PERSONA_STATE_DIR", "PERSONA_WEB_HOST", "PERSONA_WEB_PORT", "PERSONA_MODEL_REGISTRY", "PERSONA_SASL_PASSWORD"} <= set(names)
    unknown = {n: sorted(w) for n, w in names.items() if n[len(PREFIX) :].lower() not in Settings.model_fields}
    assert not unknown, f"not fields of stream_app.settings.Settings: {unknown}"


def test_configmap_and_secret_make_valid_settings(clean_env: pytest.MonkeyPatch) -> None:
    for name, value in {**_config(), **_one("Secret")["stringData"]}.items():
        clean_env.setenv(name, str(value))
    settings = Settings()
    assert settings.security_protocol.startswith("SASL"), "the Secret carries SASL credentials: the protocol must use them"
    assert settings.sasl_password is not None
    assert settings.web_host == "0.0.0.0", "kubelet probes and Prometheus reach the pod's IP, not its loopback"


def test_compose_environments_make_valid_settings(clean_env: pytest.MonkeyPatch) -> None:
    for service, spec in _compose()["services"].items():
        names = _env_names(spec.get("environment"))
        if not any(n.startswith(PREFIX) for n in names):
            continue
        with clean_env.context() as env:
            for name, value in spec["environment"].items():
                env.setenv(name, str(value))
            Settings()  # raises on a value Settings refuses
        assert service in (*WORKER_SERVICES, "trainer", "shared-snapshot")


# --- the worker StatefulSet, its Service, probes and disruption budget -----------------------


def test_statefulset_state_volume_is_mounted_at_the_state_dir() -> None:
    sts = _statefulset()
    templates = sts["spec"]["volumeClaimTemplates"]
    assert len(templates) == 1
    claim = templates[0]
    assert claim["spec"]["accessModes"] == ["ReadWriteOnce"], "one RocksDB volume per pod"
    mounts = {m["name"]: m["mountPath"] for m in _worker_container()["volumeMounts"]}
    state_dir = PurePosixPath(_config()["PERSONA_STATE_DIR"])
    mount = PurePosixPath(mounts[claim["metadata"]["name"]])
    assert state_dir == mount or state_dir.is_relative_to(mount), f"PERSONA_STATE_DIR {state_dir} is not on the claim mounted at {mount}"
    pod_volumes = {v["name"] for v in sts["spec"]["template"]["spec"].get("volumes", [])}
    assert claim["metadata"]["name"] not in pod_volumes, "the state volume comes from the template, not a shared pod volume"
    env_from = _worker_container()["envFrom"]
    assert {"configMapRef": {"name": _one("ConfigMap")["metadata"]["name"]}} in env_from
    assert {"secretRef": {"name": _one("Secret")["metadata"]["name"]}} in env_from


def test_headless_service_selects_the_statefulset_pods() -> None:
    sts = _statefulset()
    service = _one("Service", sts["spec"]["serviceName"])
    assert service["spec"]["clusterIP"] == "None"
    pod_labels = sts["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    assert sts["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    name, port = _http_port(_worker_container())
    (service_port,) = service["spec"]["ports"]
    assert service_port["targetPort"] in (name, port)
    assert service_port["port"] == port


def test_worker_probes_scrape_annotations_and_limits() -> None:
    sts = _statefulset()
    pod = sts["spec"]["template"]
    container = _worker_container()
    name, port = _http_port(container)
    assert str(port) == _config()["PERSONA_WEB_PORT"], "the container port is the web port the worker binds"

    def probe_target(probe: str) -> tuple[str, Any]:
        get = container[probe]["httpGet"]
        return get["path"], get["port"]

    assert probe_target("readinessProbe") == ("/ready", name) or probe_target("readinessProbe") == ("/ready", port)
    assert probe_target("livenessProbe")[0] == "/metrics"
    assert probe_target("livenessProbe")[1] in (name, port)

    annotations = pod["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(port)
    assert annotations["prometheus.io/path"] == "/metrics"

    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"worker {kind}"
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
    # Longer than one commit's work (commit interval, producer flush, leaving the group).
    grace = pod["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 60, grace
    assert grace > Settings.model_fields["session_timeout_s"].default


def test_statefulset_pods_are_static_group_members_named_after_the_pod() -> None:
    (entry,) = [e for e in _worker_container().get("env", []) if e["name"] == "PERSONA_GROUP_INSTANCE_ID"]
    assert entry["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name", "unique and stable across the pod's restarts"
    assert "PERSONA_GROUP_INSTANCE_ID" not in _config(), "one value for all pods would make them fence each other"


def test_a_pod_scaled_away_may_read_its_statefulset_and_nothing_more() -> None:
    """PERSONA_STATIC_LEAVE=kubernetes (stream_app.scale_down): the pods' names parse as the
    StatefulSet's pods, and their service account is bound to get exactly that StatefulSet."""
    from stream_app.scale_down import Pod, pod_of

    sts = _statefulset()
    name, replicas = sts["metadata"]["name"], sts["spec"]["replicas"]
    env = {e["name"]: e for e in _worker_container().get("env", [])}
    assert env["PERSONA_STATIC_LEAVE"]["value"] == "kubernetes"
    Settings(group_instance_id=f"{name}-0", static_leave="kubernetes")  # what a pod starts with is valid
    assert [pod_of(f"{name}-{n}") for n in range(replicas)] == [Pod(name, n) for n in range(replicas)]
    pod = sts["spec"]["template"]["spec"]
    account = pod["serviceAccountName"]
    assert pod.get("automountServiceAccountToken", True) is True, "the token is how the pod asks"
    assert _one("ServiceAccount", account)["metadata"]["namespace"] == sts["metadata"]["namespace"]
    binding = _one("RoleBinding")
    assert binding["subjects"] == [{"kind": "ServiceAccount", "name": account, "namespace": sts["metadata"]["namespace"]}]
    assert binding["roleRef"]["kind"] == "Role"
    role = _one("Role", binding["roleRef"]["name"])
    assert role["rules"] == [{"apiGroups": ["apps"], "resources": ["statefulsets"], "resourceNames": [name], "verbs": ["get"]}]
    assert "PERSONA_STATIC_LEAVE" not in _config() or _config()["PERSONA_STATIC_LEAVE"] == "kubernetes"


def test_pdb_covers_the_workers() -> None:
    pdb = _one("PodDisruptionBudget")
    pod_labels = _statefulset()["spec"]["template"]["metadata"]["labels"]
    assert pdb["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])


# --- the trainer CronJob and the model registry claim ----------------------------------------


def test_trainer_cronjob_shares_the_model_registry_claim() -> None:
    cron = _one("CronJob", "persona-trainer")
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    (container,) = pod["containers"]
    command = [*container.get("command", []), *container.get("args", [])]
    assert command[:2] == ["persona", "train"] and "--from-topics" in command, command
    assert "--every" not in command, "the CronJob schedules the runs"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind]), f"trainer {kind}"

    pvc = _one("PersistentVolumeClaim")
    assert "ReadWriteMany" in pvc["spec"]["accessModes"], "workers and the trainer mount it at once"

    def models_mount(pod_spec: dict[str, Any], ctr: dict[str, Any]) -> PurePosixPath:
        volumes = {v["name"] for v in pod_spec["volumes"] if v.get("persistentVolumeClaim", {}).get("claimName") == pvc["metadata"]["name"]}
        (path,) = [m["mountPath"] for m in ctr["volumeMounts"] if m["name"] in volumes]
        return PurePosixPath(path)

    worker_mount = models_mount(_statefulset()["spec"]["template"]["spec"], _worker_container())
    trainer_mount = models_mount(pod, container)
    assert worker_mount == trainer_mount
    config = _config()
    for name in ("PERSONA_MODEL_REGISTRY", "PERSONA_RANKER_REGISTRY"):
        assert PurePosixPath(config[name]).is_relative_to(worker_mount), f"{name} is on the shared claim"


def test_shared_snapshot_cronjob_truncates_one_run_at_a_time_with_the_workers_settings() -> None:
    cron = _one("CronJob", "persona-shared-snapshot")
    # Two runs at once could each delete deltas the other's base snapshot still needs.
    assert cron["spec"]["concurrencyPolicy"] == "Forbid"
    pod = cron["spec"]["jobTemplate"]["spec"]["template"]["spec"]
    (container,) = pod["containers"]
    assert container["command"][:3] == ["persona", "shared", "snapshot"] and "--truncate" in container["command"]
    assert "--every" not in container["command"], "the CronJob schedules the runs"
    # The snapshot must be taken with the workers' scoring settings, or they cannot restore it.
    assert container["envFrom"] == _worker_container()["envFrom"]
    assert container["image"].split(":")[0] == _worker_container()["image"].split(":")[0]
    compose = _compose()["services"]["shared-snapshot"]
    assert compose["command"][:4] == ["persona", "shared", "snapshot", "--truncate"] and "--every" in compose["command"]
    assert compose["environment"] == {k: v for k, v in compose["environment"].items() if not k.startswith("PERSONA_WEB")}
    for name, value in compose["environment"].items():
        assert _compose()["services"]["worker-1"]["environment"].get(name) == value, name


# --- compose: services, volumes, Dockerfile and Prometheus ----------------------------------


def test_compose_services() -> None:
    services = _compose()["services"]
    assert {"kafka", *WORKER_SERVICES, "trainer", "prometheus", "grafana"} <= set(services)

    kafka = services["kafka"]
    assert kafka["image"] == "apache/kafka:4.1.0"
    roles = set(kafka["environment"]["KAFKA_PROCESS_ROLES"].split(","))
    assert roles == {"broker", "controller"}, "one combined KRaft node"
    assert "kafka:9092" in kafka["environment"]["KAFKA_ADVERTISED_LISTENERS"]

    named_volumes = set(_compose()["volumes"])
    ports: set[str] = set()
    state_volumes: set[str] = set()
    models: set[tuple[str, str]] = set()
    for name in WORKER_SERVICES:
        worker = services[name]
        env = worker["environment"]
        assert env["PERSONA_WEB_HOST"] == "0.0.0.0", f"{name}: Prometheus scrapes it over the compose network"
        assert env["PERSONA_BOOTSTRAP_SERVERS"] == "kafka:9092"
        ports.add(env["PERSONA_WEB_PORT"])
        mounts = dict(_split_volume(v)[::-1] for v in worker["volumes"])  # target -> source
        state_dir = PurePosixPath(env["PERSONA_STATE_DIR"])
        (state,) = [src for target, src in mounts.items() if state_dir == PurePosixPath(target) or state_dir.is_relative_to(target)]
        assert state in named_volumes, f"{name}: RocksDB state on a named volume"
        state_volumes.add(state)
        registry_mounts = {
            (src, target) for target, src in mounts.items() if PurePosixPath(env["PERSONA_MODEL_REGISTRY"]).is_relative_to(target)
        }
        assert len(registry_mounts) == 1
        models |= registry_mounts
        assert PurePosixPath(env["PERSONA_RANKER_REGISTRY"]).is_relative_to(next(iter(registry_mounts))[1])
        check = " ".join(worker["healthcheck"]["test"])
        assert f":{env['PERSONA_WEB_PORT']}/ready" in check, f"{name}: the healthcheck asks its own /ready"
        assert worker["depends_on"]["kafka"]["condition"] == "service_healthy"
    assert len(ports) == len(WORKER_SERVICES), "distinct web ports"
    instance_ids = {services[name]["environment"]["PERSONA_GROUP_INSTANCE_ID"] for name in WORKER_SERVICES}
    assert len(instance_ids) == len(WORKER_SERVICES), "one static group member id per worker: two would take it from each other"
    assert len(state_volumes) == len(WORKER_SERVICES), "one state volume per worker"
    assert len(models) == 1, "the workers share one models volume"

    trainer = services["trainer"]
    assert trainer["command"][:5] == ["persona", "train", "--from-topics", "--every", "6h"]
    assert trainer["build"]["target"] == "trainer"
    trainer_mounts = {_split_volume(v) for v in trainer["volumes"]}
    assert models <= trainer_mounts, "the trainer writes the registries the workers read"
    for name in ("PERSONA_MODEL_REGISTRY", "PERSONA_RANKER_REGISTRY"):
        assert trainer["environment"][name] == services["worker-1"]["environment"][name]


def test_compose_builds_the_dockerfile_targets() -> None:
    stages = _dockerfile_stages()
    assert stages["base"][0].split()[1] == "python:3.11-slim"
    for target, extra in (("worker", ".[worker]"), ("trainer", ".[train]")):
        assert target in stages, f"Dockerfile stage {target}"
        body = " ".join(stages[target])
        assert f'pip install "{extra}"' in body, f"stage {target} installs {extra}"
        assert re.search(r"^USER\s+(?!0\b|root\b)", "\n".join(stages[target]), re.MULTILINE), f"stage {target} runs as non-root"
    for name, service in _compose()["services"].items():
        build = service.get("build")
        if build is None:
            continue
        assert (DEPLOY / build["context"] / build["dockerfile"]).resolve() == DOCKERFILE, name
        assert build["target"] in stages, f"{name}: target {build['target']}"
    k8s_commands = {c["name"]: c["command"] for c in _all_containers()}
    assert k8s_commands["worker"] == ["persona", "worker"]


def test_prometheus_compose_config_scrapes_every_worker() -> None:
    config = _yaml(PROMETHEUS_COMPOSE)
    services = _compose()["services"]
    jobs = {j["job_name"]: j for j in config["scrape_configs"]}
    job = jobs["persona-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for group in job["static_configs"] for t in group["targets"]}
    assert targets == {f"{name}:{services[name]['environment']['PERSONA_WEB_PORT']}" for name in WORKER_SERVICES}
    # The Prometheus Operator names the job after the Service (no jobLabel): the same job label
    # in both deployments, so one set of alert rules and dashboards serves both.
    assert "jobLabel" not in _one("ServiceMonitor")["spec"]
    assert _one("Service", _statefulset()["spec"]["serviceName"])["metadata"]["name"] == "persona-worker"
    mounts = {target: source for source, target in map(_split_volume, services["prometheus"]["volumes"])}
    assert "/etc/prometheus/prometheus.yml" in mounts
    assert _host_path(mounts["/etc/prometheus/prometheus.yml"]) == PROMETHEUS_COMPOSE
    rule_targets = {t for t, s in mounts.items() if _host_path(s) == DEPLOY / "prometheus" / "alerts.yml"}
    assert rule_targets and set(config["rule_files"]) == rule_targets, "rule_files name where alerts.yml is mounted"


def test_compose_mounted_deploy_files_exist() -> None:
    checked = []
    for name, service in _compose()["services"].items():
        for spec in service.get("volumes", []):
            source, _ = _split_volume(spec) if isinstance(spec, str) else (spec.get("source", ""), spec.get("target"))
            if not _is_bind(source):
                continue
            path = _host_path(source)
            if not path.is_relative_to(DEPLOY) or any(path == p or path.is_relative_to(p) for p in NOT_OURS):
                continue
            checked.append(path)
            assert path.exists(), f"{name} mounts {source}, which does not exist"
    assert PROMETHEUS_COMPOSE in checked
    grafana = {_split_volume(v)[0] for v in _compose()["services"]["grafana"]["volumes"]}
    assert {"./grafana/provisioning", "./grafana/dashboards"} <= grafana
