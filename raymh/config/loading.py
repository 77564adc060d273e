"""Loading a config: YAML presets (`raymh/configs/*.yaml`; a preset may name one other preset under
`extends:` and override parts of it, one level, deep-merged), files, dotted overrides (`--set k=v`),
validation into the schema with errors that name the key path, and flattening for MLflow params.
"""

from __future__ import annotations

import copy
from importlib import resources
from pathlib import Path
from typing import Any

import yaml
from pydantic import BaseModel, ValidationError

from raymh.config.schema import ConfigError, ExperimentConfig


def preset_names() -> list[str]:
    """Names of the presets shipped in the package."""
    return sorted(p.name[:-5] for p in resources.files("raymh.configs").iterdir() if p.name.endswith(".yaml"))


def _read_yaml(text: str, where: str) -> dict[str, Any]:
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise ConfigError(f"{where}: not valid YAML: {e}") from e
    if not isinstance(data, dict):
        raise ConfigError(f"{where}: expected a mapping at the top level, got {type(data).__name__}")
    return data


def _load_raw(name_or_path: str, _seen: tuple[str, ...] = ()) -> dict[str, Any]:
    path = Path(name_or_path).expanduser()
    if path.suffix in (".yaml", ".yml") or path.exists():
        if not path.is_file():
            raise ConfigError(f"config file {str(path)!r} does not exist; presets: {', '.join(preset_names())}")
        raw = _read_yaml(path.read_text(), str(path))
    else:
        if name_or_path not in preset_names():
            raise ConfigError(
                f"unknown config {name_or_path!r}: not a file and not a preset; presets: {', '.join(preset_names())}"
            )
        raw = _read_yaml(resources.files("raymh.configs").joinpath(f"{name_or_path}.yaml").read_text(), name_or_path)
    parent = raw.pop("extends", None)
    if parent is None:
        return raw
    if parent in _seen:
        raise ConfigError(f"{name_or_path}: `extends` loops through {parent!r}")
    return deep_merge(_load_raw(str(parent), (*_seen, name_or_path)), raw)


def deep_merge(base: dict[str, Any], top: dict[str, Any]) -> dict[str, Any]:
    """A copy of `base` with `top` merged in; mappings merge key by key, anything else replaces."""
    out = copy.deepcopy(base)
    for k, v in top.items():
        if isinstance(v, dict) and isinstance(out.get(k), dict):
            out[k] = deep_merge(out[k], v)
        else:
            out[k] = copy.deepcopy(v)
    return out


def parse_override(item: str) -> tuple[str, Any]:
    """`loss.dc_weight=0.2` -> ("loss.dc_weight", 0.2); the value is read as YAML."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"override {item!r} must look like key.path=value (e.g. loss.dc_weight=0.2)")
    try:
        parsed = yaml.safe_load(value) if value.strip() else None
    except yaml.YAMLError as e:
        raise ConfigError(f"override {item!r}: value is not valid YAML: {e}") from e
    return key.strip(), parsed


def set_dotted(data: dict[str, Any], key: str, value: Any) -> None:
    """Set `a.b.c` (list items by index: `domains.0.kind`) in a nested dict, in place."""
    parts = key.split(".")
    node: Any = data
    for i, part in enumerate(parts[:-1]):
        where = ".".join(parts[: i + 1])
        if isinstance(node, list):
            node = node[_index(node, part, where)]
        else:
            if node.get(part) is None:
                node[part] = {}
            node = node[part]
        if not isinstance(node, dict | list):
            raise ConfigError(f"override {key!r}: {where!r} is a value, not a section")
    last = parts[-1]
    if isinstance(node, list):
        node[_index(node, last, key)] = value
    else:
        node[last] = value


def _index(node: list, part: str, where: str) -> int:
    if not part.isdigit() or int(part) >= len(node):
        raise ConfigError(f"override key {where!r}: {part!r} is not an index of a list of {len(node)} items")
    return int(part)


def apply_overrides(data: dict[str, Any], overrides: list[str] | dict[str, Any]) -> dict[str, Any]:
    """A copy of `data` with dotted overrides applied (strings `k=v` or a mapping of dotted keys)."""
    out = copy.deepcopy(data)
    items = overrides.items() if isinstance(overrides, dict) else map(parse_override, overrides)
    for key, value in items:
        set_dotted(out, key, value)
    return out


def _key_path(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        out += f"[{part}]" if isinstance(part, int) else (f".{part}" if out else str(part))
    return out or "<top>"


def config_from_dict(data: dict[str, Any], *, where: str = "config") -> ExperimentConfig:
    """Validate a raw dict; errors name every bad key path and what is wrong with it."""
    try:
        return ExperimentConfig.model_validate(data)
    except ValidationError as e:
        lines = []
        for err in e.errors():
            msg = "unknown key (check the spelling; see `raymh config show`)" if err["type"] == "extra_forbidden" else err["msg"]
            whole = not err["loc"]  # a rule across keys: its message names them; the input is the whole config
            got = "" if whole or err["type"] in ("extra_forbidden", "missing") else f" (got {err.get('input')!r})"
            lines.append(f"  {_key_path(err['loc'])}: {msg}{got}")
        raise ConfigError(f"{where} is invalid:\n" + "\n".join(lines)) from None


def load_config_dict(name_or_path: str, overrides: list[str] | dict[str, Any] = ()) -> dict[str, Any]:
    """The raw (merged, overridden) dict of a preset or file, before validation."""
    return apply_overrides(_load_raw(name_or_path), overrides or [])


def load_config(name_or_path: str = "quickstart", overrides: list[str] | dict[str, Any] = ()) -> ExperimentConfig:
    """Load a preset name or YAML file, apply `--set` overrides, validate."""
    return config_from_dict(load_config_dict(name_or_path, overrides), where=f"config {name_or_path!r}")


def flatten(cfg: ExperimentConfig | dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Dotted-key view of a config, for MLflow params: {"loss.dc_weight": 0.1, "domains.0.name": ...}."""
    data = cfg.model_dump(mode="json") if isinstance(cfg, BaseModel) else cfg
    out: dict[str, Any] = {}
    items = enumerate(data) if isinstance(data, list) else data.items()
    for k, v in items:
        key = f"{prefix}{k}"
        if isinstance(v, dict | list) and v and not all(isinstance(x, int | float) for x in v):
            out.update(flatten(v, f"{key}."))
        else:
            out[key] = v
    return out


def to_yaml(cfg: ExperimentConfig) -> str:
    """The resolved config as YAML (what gets logged next to a run and loaded back by `--config FILE`)."""
    return yaml.safe_dump(cfg.model_dump(mode="json"), sort_keys=False)
