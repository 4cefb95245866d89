"""deploy/k8s means what deploy/README.md says: settings, secrets, scaling, probes, shutdown, security."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import yaml
from pydantic import SecretStr

from service.config import Settings
from service.embedded import INBOUND_TOPICS

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
SETTINGS = {name.upper() for name in Settings.model_fields}
SECRET_SETTINGS = {
    name.upper()
    for name, field in Settings.model_fields.items()
    if SecretStr in getattr(field.annotation, "__args__", ())
}
# Shipped commented out in secret.yaml: set only for a Kafka that wants SASL credentials (with
# the default PLAINTEXT the service refuses to start while a password is set).
COMMENTED_SECRETS = {"KAFKA_SASL_PASSWORD"}
INBOUND_PARTITIONS = 6  # docker-compose.yml's topics job and `python -m service dev` (test_deploy_files)
# The worker's shutdown budget (service/worker.py, service/runtime.py): outbox flushes 10 s + 5 s,
# FastStream's graceful timeout 30 s for a batch in flight, 5 s for the background loops.
WORKER_SHUTDOWN_SECONDS = 10 + 5 + 30 + 5


def _docs() -> list[dict[str, Any]]:
    docs = []
    for path in sorted(K8S.glob("*.yaml")):
        if path.name != "kustomization.yaml":
            docs.extend(d for d in yaml.safe_load_all(path.read_text()) if d is not None)
    return docs


def _one(kind: str, name: str | None = None) -> dict[str, Any]:
    found = [d for d in _docs() if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)]
    assert len(found) == 1, (kind, name, len(found))
    return found[0]


def _config() -> dict[str, str]:
    return _one("ConfigMap")["data"]


def _worker() -> dict[str, Any]:
    return _one("StatefulSet", "sessionpulse-worker")


def _api() -> dict[str, Any]:
    return _one("Deployment", "sessionpulse-api")


def _container(workload: dict[str, Any]) -> dict[str, Any]:
    (container,) = workload["spec"]["template"]["spec"]["containers"]
    return container


def _env(workload: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {e["name"]: e for e in _container(workload).get("env", [])}


def _port(container: dict[str, Any], name: str) -> int:
    (port,) = [p["containerPort"] for p in container["ports"] if p["name"] == name]
    return port


def test_configmap_secret_and_pod_env_cover_every_setting_once() -> None:
    config = set(_config())
    secret = set(_one("Secret")["stringData"])
    per_pod = {"KAFKA_GROUP_INSTANCE_ID"}
    assert config | secret | per_pod | COMMENTED_SECRETS == SETTINGS, (
        SETTINGS - (config | secret | per_pod | COMMENTED_SECRETS),
        (config | secret) - SETTINGS,
    )
    assert not config & secret
    assert secret | COMMENTED_SECRETS == SECRET_SETTINGS | {"REDIS_URL"}, (
        "the secrets and REDIS_URL (it may carry a password)"
    )
    secret_text = (K8S / "secret.yaml").read_text()
    for name in COMMENTED_SECRETS:
        assert f'  # {name}: "CHANGE-ME"' in secret_text, f"secret.yaml shows {name}, commented out"
    assert all(isinstance(v, str) for v in _config().values()), "ConfigMap values are strings"
    for workload in (_worker(), _api()):
        env = set(_env(workload))
        assert env <= SETTINGS, env - SETTINGS
        (ref,) = _container(workload)["envFrom"]
        assert ref["configMapRef"]["name"] == _one("ConfigMap")["metadata"]["name"]


def test_the_secret_holds_placeholders_only() -> None:
    secret = _one("Secret")
    assert "data" not in secret, "placeholders are readable stringData, never encoded values"
    for key, value in secret["stringData"].items():
        assert "CHANGE-ME" in value, f"{key} must be a marked placeholder, not a credential"
    api_env = _env(_api())
    for key in [*secret["stringData"], *COMMENTED_SECRETS]:
        ref = api_env[key]["valueFrom"]["secretKeyRef"]
        assert ref == {"name": secret["metadata"]["name"], "key": key} | (
            {"optional": True} if key != "REDIS_URL" else {}
        )
    # The worker needs Redis and Kafka, not the webhook keys or the API keys.
    worker_env = _env(_worker())
    assert set(worker_env) & (set(secret["stringData"]) | COMMENTED_SECRETS) == {
        "REDIS_URL",
        "KAFKA_SASL_PASSWORD",
    }
    assert (
        worker_env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
        == api_env["KAFKA_SASL_PASSWORD"]["valueFrom"]["secretKeyRef"]
    )


def test_settings_in_the_configmap_parse() -> None:
    """The ConfigMap's values are what Settings accepts (an empty TOPIC_PREFIX included)."""
    settings = Settings(_env_file=None, **{k.lower(): v for k, v in _config().items()})
    assert settings.metrics_port == _port(_container(_worker()), "metrics")
    assert settings.http_port == _port(_container(_api()), "http")
    assert settings.http_host == "0.0.0.0"
    assert settings.kafka_enable_idempotence, "real Kafka has the idempotent producer"


def test_worker_is_a_statefulset_with_static_membership() -> None:
    worker = _worker()
    env = _env(worker)
    assert env["KAFKA_GROUP_INSTANCE_ID"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.name"}}
    assert worker["spec"]["updateStrategy"]["type"] == "RollingUpdate"
    assert worker["spec"]["serviceName"] == _one("Service", "sessionpulse-worker")["metadata"]["name"]
    assert _one("Service", "sessionpulse-worker")["spec"]["clusterIP"] == "None"
    config = _config()
    # A restarted pod (shutdown, new pod, start, rejoin) must fit in the session timeout.
    assert int(config["KAFKA_SESSION_TIMEOUT_MS"]) >= 45_000
    assert int(config["KAFKA_HEARTBEAT_INTERVAL_MS"]) * 3 <= int(config["KAFKA_SESSION_TIMEOUT_MS"])
    assert worker["spec"].get("minReadySeconds", 0) > 0
    assert not any(d["kind"] == "Deployment" and "worker" in d["metadata"]["name"] for d in _docs())


def test_worker_replicas_and_keda_stay_within_the_partitions() -> None:
    worker = _worker()
    scaled = _one("ScaledObject")["spec"]
    assert 1 <= worker["spec"]["replicas"] <= INBOUND_PARTITIONS
    target = scaled["scaleTargetRef"]
    assert (target["apiVersion"], target["kind"], target["name"]) == (
        worker["apiVersion"],
        worker["kind"],
        worker["metadata"]["name"],
    )
    # Never zero: the idle sweeper and the outboxes run in the workers. The CRD's CEL rule:
    # minReplicaCount <= maxReplicaCount.
    assert 1 <= scaled["minReplicaCount"] <= worker["spec"]["replicas"] <= scaled["maxReplicaCount"]
    assert scaled["maxReplicaCount"] <= INBOUND_PARTITIONS
    assert scaled["fallback"]["replicas"] >= scaled["minReplicaCount"]


def test_keda_triggers_follow_the_configmap_and_cover_every_inbound_topic() -> None:
    config = _config()
    triggers = _one("ScaledObject")["spec"]["triggers"]
    topics = []
    for trigger in triggers:
        assert trigger["type"] == "kafka"
        meta = trigger["metadata"]
        assert meta["bootstrapServers"] == config["KAFKA_BOOTSTRAP_SERVERS"]
        assert meta["consumerGroup"] == config["CONSUMER_GROUP"]
        assert meta["allowIdleConsumers"] == "false", "cap each trigger at its topic's partitions"
        assert meta["offsetResetPolicy"] == "earliest", "the worker's auto_offset_reset"
        assert int(meta["lagThreshold"]) > 0
        topics.append(meta["topic"])
    assert sorted(topics) == sorted(config["TOPIC_PREFIX"] + t for t in INBOUND_TOPICS)


def test_termination_grace_covers_the_worker_shutdown() -> None:
    worker_grace = _worker()["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert worker_grace >= WORKER_SHUTDOWN_SECONDS
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    for name, svc in compose["services"].items():
        if name.startswith("worker"):
            assert svc["stop_grace_period"] == f"{worker_grace}s", "Compose and Kubernetes give the same time"
    api = _api()["spec"]["template"]["spec"]
    (sleep,) = [int(a) for a in _container(_api())["lifecycle"]["preStop"]["exec"]["command"][1:]]
    assert api["terminationGracePeriodSeconds"] > sleep


def test_probes() -> None:
    api = _container(_api())
    assert api["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "http"}
    assert api["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "http"}
    worker = _container(_worker())
    for probe in ("livenessProbe", "readinessProbe"):
        assert worker[probe]["httpGet"] == {"path": "/metrics", "port": "metrics"}


def test_commands_images_and_scrape_annotations() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    (image,) = kustomization["images"]
    for workload, command, port_name in ((_worker(), "worker", "metrics"), (_api(), "api", "http")):
        container = _container(workload)
        assert container["command"] == ["python", "-m", "service", command]
        assert container["image"] == image["name"]
        annotations = workload["spec"]["template"]["metadata"]["annotations"]
        assert annotations["prometheus.io/scrape"] == "true"
        assert annotations["prometheus.io/path"] == "/metrics"
        assert int(annotations["prometheus.io/port"]) == _port(container, port_name)


def test_pods_run_non_root_on_a_read_only_root_with_resources() -> None:
    for workload in (_worker(), _api()):
        pod = workload["spec"]["template"]["spec"]
        assert pod["securityContext"]["runAsNonRoot"] is True
        assert pod["securityContext"]["runAsUser"] == 10001, "the image's user (deploy/Dockerfile)"
        assert pod["automountServiceAccountToken"] is False
        for container in pod["containers"]:
            sc = container["securityContext"]
            assert sc["readOnlyRootFilesystem"] is True
            assert sc["allowPrivilegeEscalation"] is False
            assert sc["capabilities"]["drop"] == ["ALL"]
            for kind in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(container["resources"][kind]), (container["name"], kind)
    dockerfile = (ROOT / "deploy" / "Dockerfile").read_text()
    assert re.search(r"^USER 10001", dockerfile, re.MULTILINE)


def test_selectors_and_targets_match() -> None:
    for workload in (_worker(), _api()):
        labels = workload["spec"]["template"]["metadata"]["labels"]
        selector = workload["spec"]["selector"]["matchLabels"]
        assert selector.items() <= labels.items()
    pods = {
        "worker": _worker()["spec"]["template"]["metadata"]["labels"],
        "api": _api()["spec"]["template"]["metadata"]["labels"],
    }
    for doc in _docs():
        spec = doc.get("spec", {})
        selector = spec.get("selector")
        if doc["kind"] in ("Service", "PodDisruptionBudget"):
            selector = selector.get("matchLabels", selector)
            matched = [name for name, labels in pods.items() if selector.items() <= labels.items()]
            assert len(matched) == 1, (doc["kind"], doc["metadata"]["name"], matched)
    hpa = _one("HorizontalPodAutoscaler")["spec"]
    assert hpa["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": "sessionpulse-api",
    }
    assert 1 <= hpa["minReplicas"] <= _api()["spec"]["replicas"] <= hpa["maxReplicas"]
    service = _one("Service", "sessionpulse-api")
    (port,) = service["spec"]["ports"]
    assert port["targetPort"] == "http"


def test_manifests_are_namespace_agnostic() -> None:
    for doc in _docs():
        assert "namespace" not in doc["metadata"], doc["metadata"]["name"]
