"""docker-compose.yml and deploy/Dockerfile stay honest: no Docker engine runs here, so read them.

Schema validation is in test_deploy_schemas.py, the Kubernetes manifests' meaning in
test_deploy_k8s.py, Prometheus and Grafana in test_deploy_observability.py.
"""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.config import Settings
from service.embedded import INBOUND_TOPICS

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {name.upper() for name in Settings.model_fields}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def _ours(services: dict) -> dict[str, dict]:
    return {name: svc for name, svc in services.items() if "deploy/Dockerfile" in str(svc.get("build", ""))}


def _workers(services: dict) -> dict[str, dict]:
    return {name: svc for name, svc in _ours(services).items() if name.startswith("worker")}


def _seconds(duration: str) -> float:
    """A Compose duration such as "1m30s" or "45s" in seconds."""
    units = {"h": 3600, "m": 60, "s": 1, "ms": 0.001}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|h|m|s)", duration)
    assert parts and "".join(n + u for n, u in parts) == duration, duration
    return sum(float(n) * units[u] for n, u in parts)


def test_service_containers_set_only_real_settings() -> None:
    services = _compose()["services"]
    ours = _ours(services)
    assert {"api"} <= set(ours) and any(name.startswith("worker") for name in ours)
    for name, svc in ours.items():
        env = set(svc.get("environment", {}))
        assert env <= SETTINGS, f"{name} sets unknown variables {env - SETTINGS}"
        command = " ".join(svc.get("command", ["python", "-m", "service", "worker"]))
        assert re.search(r"python -m service (worker|api)$", command), (name, command)


def test_every_dependency_is_waited_for() -> None:
    services = _compose()["services"]
    for name, svc in services.items():
        for dep, cond in (svc.get("depends_on") or {}).items():
            assert dep in services, (name, dep)
            wanted = cond["condition"]
            if wanted == "service_healthy":
                assert "healthcheck" in services[dep], f"{name} waits for {dep}, which has no healthcheck"
            if wanted == "service_completed_successfully":
                assert services[dep].get("restart") == "no", f"{dep} is a one-shot job and must not restart"


def test_the_system_is_all_there() -> None:
    """Issue 7: Kafka (KRaft), Redis with AOF, the topics job, two workers, the API, Prometheus, Grafana."""
    services = _compose()["services"]
    kafka = services["kafka"]
    assert kafka["image"].startswith("apache/kafka:")
    assert "controller" in kafka["environment"]["KAFKA_PROCESS_ROLES"]
    assert "ZOOKEEPER" not in " ".join(kafka["environment"]).upper()
    redis = services["redis"]
    assert (
        "--appendonly" in redis["command"]
        and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    )
    assert services["prometheus"]["image"].startswith("prom/prometheus:")
    assert services["grafana"]["image"].startswith("grafana/grafana:")
    assert len(_workers(services)) == 2
    for name in ("kafka", "redis", "api", "prometheus", "grafana", *_workers(services)):
        assert "healthcheck" in services[name], f"{name} has no healthcheck"
    for name, svc in _ours(services).items():
        deps = svc["depends_on"]
        assert deps["kafka"]["condition"] == "service_healthy", name
        assert deps["redis"]["condition"] == "service_healthy", name
        assert deps["topics"]["condition"] == "service_completed_successfully", name


def test_topics_job_creates_every_topic_inbound_with_equal_partitions() -> None:
    script = _compose()["services"]["topics"]["command"][0]
    partitions: dict[str, int] = {}
    for names, count in re.findall(r"for t in ([^;]+); do\s+create \"\$\$t\" (\d+)", script):
        for topic in names.split():
            partitions[topic] = int(count)
    inbound = {partitions[t] for t in INBOUND_TOPICS}
    # The range assignor keeps a session's partitions of every inbound topic on one worker only
    # when the inbound topics have the same partition count (README, Known limits).
    assert inbound == {6}, partitions
    assert len(_workers(_compose()["services"])) <= 6


def test_workers_have_stable_ids_metrics_and_time_to_drain() -> None:
    services = _compose()["services"]
    workers = _workers(services)
    ids = [svc["environment"].get("KAFKA_GROUP_INSTANCE_ID") for svc in workers.values()]
    assert all(ids) and len(set(ids)) == len(ids), ids
    for name, svc in workers.items():
        env = svc["environment"]
        assert env["METRICS_PORT"] == "9464", name
        assert "deploy" not in svc or "replicas" not in svc["deploy"], "replicas would share one instance id"
        # Static membership: a restart must fit in the session timeout, and heartbeats in it.
        assert int(env["KAFKA_SESSION_TIMEOUT_MS"]) >= 30_000, name
        assert int(env["KAFKA_HEARTBEAT_INTERVAL_MS"]) * 3 <= int(env["KAFKA_SESSION_TIMEOUT_MS"]), name
        # 15 s of outbox drain + 30 s graceful timeout of a batch + 5 s for the loops.
        assert _seconds(svc["stop_grace_period"]) >= 50, name
        assert "9464" in " ".join(svc["healthcheck"]["test"]), name


def test_bind_mounts_exist() -> None:
    for name, svc in _compose()["services"].items():
        for volume in svc.get("volumes", []):
            source = volume.split(":")[0]
            if source.startswith("."):
                assert (ROOT / source).exists(), (name, source)


def test_dockerfile_copies_existing_paths_and_runs_non_root() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _dest = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), src
    assert re.search(r"^USER (?!0|root)", text, re.MULTILINE)
    assert 'CMD ["python", "-m", "service", "worker"]' in text
    assert len(re.findall(r"^FROM .*-slim", text, re.MULTILINE)) == 2, "multi-stage, slim images"
    # The build checks that the Lua scripts are inside the installed package: the names it
    # checks must be scripts that exist.
    checked = re.findall(r"'(\w+\.lua)'", text)
    assert "apply_rtk.lua" in checked
    for name in checked:
        assert (ROOT / "service" / "lua" / name).is_file(), name
    assert re.search(r"^EXPOSE .*\b9464\b", text, re.MULTILINE)
