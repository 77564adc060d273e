"""Regenerate the trimmed KubeRay CRD schemas in this folder from a KubeRay checkout (not run by the tests).

    python tests/data/kuberay/trim_crd.py /path/to/kuberay v1.7.0

For each CRD (`ray-operator/config/crd/bases/ray.io_rayclusters.yaml`, `ray.io_rayjobs.yaml`) it takes the
`v1` openAPIV3Schema and keeps, along every path our manifests (cluster/kuberay/*.yaml) use, the full
subschema (types, required, enums, formats); beside those paths every sibling field name stays with just
its type. Descriptions, defaults and CEL rules are dropped. Objects with listed properties get
`additionalProperties: false`, as `kubectl apply` (strict field validation) rejects unknown fields.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import yaml

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[2]
KEEP = ("type", "required", "enum", "format", "pattern", "minimum", "maximum", "minItems", "maxItems",
        "minLength", "maxLength", "x-kubernetes-int-or-string", "x-kubernetes-preserve-unknown-fields")  # fmt: skip
CRDS = {
    "ray.io_rayclusters.yaml": [ROOT / "cluster/kuberay/raycluster.yaml", ROOT / "cluster/kuberay/raycluster-sites.yaml"],
    "ray.io_rayjobs.yaml": [ROOT / "cluster/kuberay/rayjob.yaml"],
}


def _names_only(schema: dict[str, Any]) -> dict[str, Any]:
    out = {k: schema[k] for k in ("type", "x-kubernetes-int-or-string") if k in schema}
    if "anyOf" in schema:
        out["anyOf"] = schema["anyOf"]
    return out


def trim(schema: dict[str, Any], value: Any) -> dict[str, Any]:
    """The parts of `schema` that validate `value`, plus the names and types of unused sibling fields."""
    out = {k: schema[k] for k in KEEP if k in schema}
    if "anyOf" in schema:
        out["anyOf"] = schema["anyOf"]
    props = schema.get("properties")
    if props is not None:
        used = value if isinstance(value, dict) else {}
        out["properties"] = {
            name: trim(sub, used[name]) if name in used else _names_only(sub) for name, sub in props.items()
        }
        if not schema.get("x-kubernetes-preserve-unknown-fields"):
            out["additionalProperties"] = False
    elif isinstance(schema.get("additionalProperties"), dict):
        values = list(value.values()) if isinstance(value, dict) else []
        out["additionalProperties"] = _trim_many(schema["additionalProperties"], values)
    if "items" in schema:
        out["items"] = _trim_many(schema["items"], value if isinstance(value, list) else [])
    return out


def _trim_many(schema: dict[str, Any], values: list[Any]) -> dict[str, Any]:
    """Trim against the union of several values (the items of a list, the values of a map)."""
    merged: Any = {} if schema.get("properties") else None
    for v in values:
        if isinstance(merged, dict) and isinstance(v, dict):
            merged = _union(merged, v)
    return trim(schema, merged if merged is not None else (values[0] if values else None))


def _union(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    out = dict(a)
    for k, v in b.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = _union(out[k], v)
        elif isinstance(v, list) and isinstance(out.get(k), list):
            out[k] = out[k] + v
        else:
            out[k] = v
    return out


def main(kuberay: str, ref: str) -> None:
    for crd_name, manifest_paths in CRDS.items():
        src = f"ray-operator/config/crd/bases/{crd_name}"
        text = subprocess.run(
            ["git", "-C", kuberay, "show", f"{ref}:{src}"], check=True, capture_output=True, text=True
        ).stdout
        crd = yaml.safe_load(text)
        (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
        manifest: dict[str, Any] = {}
        for path in manifest_paths:  # every manifest of this kind: the union of their field paths
            manifest = _union(manifest, yaml.safe_load(path.read_text()))
        trimmed = trim(version["schema"]["openAPIV3Schema"], manifest)
        header = (
            f"# Trimmed copy of KubeRay's {crd['spec']['names']['kind']} CRD schema (apiVersion ray.io/v1).\n"
            f"# Source: github.com/ray-project/kuberay {ref}, {src}\n"
            f"# (controller-gen {crd['metadata']['annotations'].get('controller-gen.kubebuilder.io/version')}).\n"
            "# Kept: the full subschema along every path cluster/kuberay/*.yaml uses; every other field's name\n"
            "# and type. additionalProperties: false added (strict field validation, as `kubectl apply`).\n"
            "# Regenerate with tests/data/kuberay/trim_crd.py after changing the manifests' field paths.\n"
        )
        out = HERE / crd_name.replace(".yaml", ".v1.trimmed.yaml")
        out.write_text(header + yaml.safe_dump(trimmed, sort_keys=False, width=110))
        print(f"wrote {out.relative_to(ROOT)} ({len(out.read_text().splitlines())} lines)")


if __name__ == "__main__":
    if len(sys.argv) != 3:
        sys.exit("usage: python tests/data/kuberay/trim_crd.py /path/to/kuberay-git-dir REF (e.g. v1.7.0)")
    main(sys.argv[1], sys.argv[2])
