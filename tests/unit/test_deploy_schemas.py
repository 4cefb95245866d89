"""docker-compose.yml, deploy/k8s and deploy/prometheus validate against their published schemas.

No Docker engine and no cluster run here, and the tests reach no network, so the schemas are
vendored in deploy/schemas (its README says where each came from, and which version).
"""

from __future__ import annotations

import copy
import hashlib
import importlib.util
import json
from collections.abc import Iterator
from functools import cache
from pathlib import Path
from typing import Any

import pytest
import yaml
from jsonschema import Draft202012Validator, ValidationError, validators
from referencing import Registry, Resource

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = ROOT / "deploy" / "schemas"
K8S = ROOT / "deploy" / "k8s"
K8S_SCHEMAS = SCHEMAS / "kubernetes" / "v1.33.0-local-strict"
KEDA_SCHEMA = SCHEMAS / "keda" / "scaledobject-keda-v1alpha1.json"


@cache
def _json(path: Path) -> Any:
    return json.loads(path.read_text())


@cache
def _registry() -> Registry:
    definitions = _json(K8S_SCHEMAS / "_definitions.json")
    return Registry().with_resource(definitions["$id"], Resource.from_contents(definitions))


def _schema_for(doc: dict[str, Any]) -> Path:
    """kubernetes-validate's file naming: <kind>-<group without domain>-<version>.json."""
    if (doc["apiVersion"], doc["kind"]) == ("keda.sh/v1alpha1", "ScaledObject"):
        return KEDA_SCHEMA
    group, _, version = doc["apiVersion"].rpartition("/")
    name = "-".join(p for p in (doc["kind"].lower(), group.split(".")[0], version) if p)
    return K8S_SCHEMAS / f"{name}.json"


def _errors(doc: dict[str, Any]) -> list[str]:
    path = _schema_for(doc)
    assert path.is_file(), f"no vendored schema for {doc['apiVersion']} {doc['kind']} ({path.name})"
    validator = Draft202012Validator(_json(path), registry=_registry())
    return [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc)]


def _manifests() -> Iterator[tuple[str, dict[str, Any]]]:
    for path in sorted(K8S.glob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        for doc in yaml.safe_load_all(path.read_text()):
            if doc is not None:
                yield path.name, doc


def _validator(schema_path: Path) -> Any:
    schema = _json(schema_path)
    cls = validators.validator_for(schema)
    cls.check_schema(schema)
    return cls(schema)


def test_vendored_schemas_are_the_documented_files() -> None:
    listed = {}
    for line in (SCHEMAS / "SHA256SUMS").read_text().splitlines():
        digest, name = line.split(maxsplit=1)
        listed[name] = digest
    present = {str(p.relative_to(SCHEMAS)) for p in SCHEMAS.rglob("*.json")}
    assert present == set(listed), "update deploy/schemas/SHA256SUMS and its README with the schemas"
    for name, digest in listed.items():
        assert hashlib.sha256((SCHEMAS / name).read_bytes()).hexdigest() == digest, name
    readme = (SCHEMAS / "README.md").read_text()
    for name in listed:
        top = name.split("/")[0]
        assert top in readme, f"deploy/schemas/README.md does not say where {name} came from"


def test_compose_file_validates_against_the_compose_specification() -> None:
    validator = _validator(SCHEMAS / "compose-spec" / "compose-spec.json")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    errors = [f"{'.'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(compose)]
    assert not errors, errors


def test_every_manifest_validates_against_its_schema() -> None:
    seen = []
    for name, doc in _manifests():
        errors = _errors(doc)
        assert not errors, (name, doc["kind"], errors)
        seen.append(doc["kind"])
    expected = {
        "ConfigMap",
        "Secret",
        "Service",
        "StatefulSet",
        "Deployment",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "ScaledObject",
    }
    assert set(seen) == expected, seen


def test_kustomization_validates_and_lists_every_manifest() -> None:
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    errors = [
        e.message
        for e in _validator(SCHEMAS / "schemastore" / "kustomization.json").iter_errors(kustomization)
    ]
    assert not errors, errors
    files = {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    assert sorted(kustomization["resources"]) == sorted(files)
    assert "namespace" not in kustomization, "the manifests stay namespace-agnostic"


def test_prometheus_config_validates() -> None:
    config = yaml.safe_load((ROOT / "deploy" / "prometheus" / "prometheus.yml").read_text())
    errors = [e.message for e in _validator(SCHEMAS / "schemastore" / "prometheus.json").iter_errors(config)]
    assert not errors, errors


@pytest.mark.parametrize(
    ("file", "path", "value"),
    [
        # A misspelt field, a wrong type, and a field the CRD does not have: each is refused.
        (
            "worker-statefulset.yaml",
            ("spec", "template", "spec", "containers", 0, "imagePullPolicyy"),
            "Always",
        ),
        ("api-deployment.yaml", ("spec", "replicas"), "two"),
        ("api-hpa.yaml", ("spec", "metrics", 0, "resource", "target", "averageUtilisation"), 70),
        ("worker-scaledobject.yaml", ("spec", "maxReplicas"), 6),
        ("worker-scaledobject.yaml", ("spec", "triggers", 0, "metadata", "lagThreshold"), 50000),
    ],
)
def test_the_schemas_refuse_broken_manifests(file: str, path: tuple[str | int, ...], value: object) -> None:
    """The validation is not vacuous: the strict schemas catch typos and wrong types."""
    (doc,) = [copy.deepcopy(d) for name, d in _manifests() if name == file]
    node = doc
    for key in path[:-1]:
        node = node[key]
    node[path[-1]] = value
    assert _errors(doc)


def test_the_compose_schema_refuses_a_broken_file() -> None:
    validator = _validator(SCHEMAS / "compose-spec" / "compose-spec.json")
    compose = yaml.safe_load((ROOT / "docker-compose.yml").read_text())
    compose["services"]["api"]["depends_on"]["redis"]["condition"] = "service_ready"
    with pytest.raises(ValidationError):
        validator.validate(compose)


def test_crd_converter_makes_strict_json_schema() -> None:
    """deploy/schemas/crd_to_jsonschema.py, which made the KEDA schema, converts as its docstring says."""
    spec = importlib.util.spec_from_file_location("crd_to_jsonschema", SCHEMAS / "crd_to_jsonschema.py")
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    crd = {
        "kind": "CustomResourceDefinition",
        "spec": {
            "group": "example.com",
            "names": {"kind": "Widget", "singular": "widget"},
            "versions": [
                {
                    "name": "v1",
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "properties": {
                                "spec": {
                                    "type": "object",
                                    "description": "dropped",
                                    "properties": {
                                        "size": {
                                            "x-kubernetes-int-or-string": True,
                                            "anyOf": [{"type": "integer"}],
                                        },
                                        "note": {"type": "string", "nullable": True},
                                        "extra": {
                                            "type": "object",
                                            "x-kubernetes-preserve-unknown-fields": True,
                                        },
                                    },
                                    "required": ["size"],
                                },
                                "status": {"type": "object"},
                            },
                        }
                    },
                }
            ],
        },
    }
    schema = module.crd_version_schema(crd, "v1")
    assert "status" not in schema["properties"] and "description" not in json.dumps(schema)
    validator = Draft202012Validator(schema, registry=_registry())
    good = {
        "apiVersion": "example.com/v1",
        "kind": "Widget",
        "metadata": {"name": "w"},
        "spec": {"size": "1Gi"},
    }
    assert not list(validator.iter_errors(good))
    assert not list(validator.iter_errors(good | {"spec": {"size": 3, "note": None, "extra": {"any": 1}}}))
    for bad in (
        good | {"kind": "Gadget"},
        good | {"spec": {"size": 1, "colour": "red"}},
        good | {"spec": {"note": "no size"}},
        good | {"metadata": {"name": "w", "lables": {}}},
    ):
        assert list(validator.iter_errors(bad)), bad
