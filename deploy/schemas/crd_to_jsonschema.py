"""Turn one version of a CustomResourceDefinition into a strict, standalone JSON Schema.

    python deploy/schemas/crd_to_jsonschema.py keda.sh_scaledobjects.yaml v1alpha1 > out.json

It is how deploy/schemas/keda/scaledobject-keda-v1alpha1.json was made (see README.md there),
and how to remake it from a newer KEDA release's config/crd/bases/keda.sh_scaledobjects.yaml.
The conversion follows what the API server does with a structural CRD schema:

- OpenAPI v3 `nullable: true` becomes a JSON Schema type list with "null";
- `x-kubernetes-int-or-string` becomes integer-or-string;
- an object with `properties` and neither `additionalProperties` nor
  `x-kubernetes-preserve-unknown-fields` gets `additionalProperties: false`, since the API
  server prunes (or, with strict field validation, refuses) fields the CRD does not declare;
- descriptions, defaults, `status` and other `x-kubernetes-*` keys are dropped;
- `apiVersion` and `kind` are pinned to the CRD's group/version and kind, and `metadata`
  points at the Kubernetes ObjectMeta of the vendored Kubernetes schemas.

CEL rules (`x-kubernetes-validations`) cannot be expressed in JSON Schema; the tests check
the ones that matter to this project's manifests (minReplicaCount <= maxReplicaCount).
Needs PyYAML only.
"""

from __future__ import annotations

import json
import sys
from typing import Any

import yaml

OBJECT_META = (
    "https://kubernetes.io/api/_definitions.json#/$defs/io.k8s.apimachinery.pkg.apis.meta.v1.ObjectMeta"
)
KEPT = (
    "type",
    "properties",
    "items",
    "required",
    "enum",
    "format",
    "pattern",
    "anyOf",
    "oneOf",
    "allOf",
    "additionalProperties",
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minItems",
    "maxItems",
    "minLength",
    "maxLength",
    "minProperties",
    "maxProperties",
)


def convert(node: Any) -> Any:
    if not isinstance(node, dict):
        return node
    out: dict[str, Any] = {}
    for key in KEPT:
        if key not in node:
            continue
        value = node[key]
        if key == "properties":
            out[key] = {name: convert(sub) for name, sub in value.items()}
        elif key in ("items", "additionalProperties"):
            out[key] = convert(value) if isinstance(value, dict) else value
        elif key in ("anyOf", "oneOf", "allOf"):
            out[key] = [convert(sub) for sub in value]
        else:
            out[key] = value
    if node.get("x-kubernetes-int-or-string"):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if node.get("nullable") and "type" in out:
        out["type"] = [out["type"], "null"]
    is_object = out.get("type") == "object" or "properties" in out
    if (
        is_object
        and "properties" in out
        and "additionalProperties" not in out
        and not node.get("x-kubernetes-preserve-unknown-fields")
    ):
        out["additionalProperties"] = False
    return out


def crd_version_schema(crd: dict[str, Any], version: str) -> dict[str, Any]:
    spec = crd["spec"]
    (entry,) = [v for v in spec["versions"] if v["name"] == version]
    schema = convert(entry["schema"]["openAPIV3Schema"])
    schema["properties"].pop("status", None)
    schema["properties"]["apiVersion"] = {"type": "string", "enum": [f"{spec['group']}/{version}"]}
    schema["properties"]["kind"] = {"type": "string", "enum": [spec["names"]["kind"]]}
    schema["properties"]["metadata"] = {"$ref": OBJECT_META}
    schema["required"] = sorted({*schema.get("required", ()), "apiVersion", "kind", "metadata"})
    return {
        "$schema": "https://json-schema.org/draft/2020-12/schema",
        "$id": f"https://sessionpulse.invalid/schemas/{spec['names']['singular']}-{spec['group']}-{version}.json",
        "title": f"{spec['names']['kind']} {spec['group']}/{version}",
        **schema,
    }


def main(argv: list[str]) -> int:
    if len(argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    with open(argv[1], encoding="utf-8") as f:
        crd = next(d for d in yaml.safe_load_all(f) if d and d.get("kind") == "CustomResourceDefinition")
    json.dump(crd_version_schema(crd, argv[2]), sys.stdout, indent=2, sort_keys=True)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main(sys.argv))
