"""docker-compose.yml and deploy/Dockerfile stay honest: no Docker engine runs here, so read them."""

from __future__ import annotations

import re
from pathlib import Path

import yaml

from service.config import Settings

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = {name.upper() for name in Settings.model_fields}


def _compose() -> dict:
    return yaml.safe_load((ROOT / "docker-compose.yml").read_text())


def test_service_containers_set_only_real_settings() -> None:
    services = _compose()["services"]
    ours = {name: svc for name, svc in services.items() if "deploy/Dockerfile" in str(svc.get("build", ""))}
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


def test_dockerfile_copies_existing_paths_and_runs_non_root() -> None:
    text = (ROOT / "deploy" / "Dockerfile").read_text()
    for line in text.splitlines():
        if line.startswith("COPY") and "--from=" not in line:
            *sources, _dest = line.split()[1:]
            for src in sources:
                assert (ROOT / src).exists(), src
    assert re.search(r"^USER (?!0|root)", text, re.MULTILINE)
    assert 'CMD ["python", "-m", "service", "worker"]' in text
