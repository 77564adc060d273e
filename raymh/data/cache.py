"""Resolve each configured domain to a prepared (Parquet) directory, preparing on first use.

- `prepared:` set -> used as is.
- `root:` set -> `raymh data prepare` into `<cache_dir>/prepared/<kind>-<hash of the absolute root>`, once;
  later runs reuse it (run `raymh data prepare` yourself to refresh after the raw data changed).
- `data.synthetic` set -> the built-in domains are rendered once into `<cache_dir>/synth/<hash of the
  render settings>/raw`, and relative `root:`s are read inside it.
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from raymh.config import ExperimentConfig

CACHE_FORMAT = 2  # 2: the synthetic Cityscapes layout also has *_gtFine_instanceIds.png and *_gtFine_color.png


def _key(payload: object) -> str:
    return hashlib.sha256(json.dumps([CACHE_FORMAT, payload], sort_keys=True).encode()).hexdigest()[:12]


def synthetic_root(cfg: ExperimentConfig) -> Path | None:
    """Render the synthetic domains once (cached by their settings); the folder that holds them."""
    synth = cfg.data.synthetic
    if synth is None:
        return None
    base = Path(cfg.data.cache_dir).expanduser().resolve() / "synth" / _key(synth.model_dump(mode="json", exclude={"tuned_on"}))  # the bytes' settings
    raw = base / "raw"
    done = base / "rendered.json"
    if not done.is_file():
        from raymh.data.synth import render_dataset

        print(f"[raymh] rendering the synthetic domains into {raw} (once; reused after)", flush=True)
        summary = render_dataset(
            raw, images=synth.images, val_images=synth.val_images, size=tuple(synth.size), seed=synth.seed
        )
        done.write_text(json.dumps(summary, default=str, indent=1))
    return raw


def prepared_dirs(cfg: ExperimentConfig) -> dict[str, Path]:
    """{domain name: prepared dir} for every configured domain, preparing what is missing. Under placement by
    domain a `prepared:` dir is not looked at here: it is a path on the domain's own nodes, read only there
    (`raymh.data.site_reads`); a `root:` domain is still prepared here, where the driver runs."""
    from raymh.data.prepare import prepare_domain

    synth_root = synthetic_root(cfg)
    out: dict[str, Path] = {}
    for dom in cfg.domains:
        if dom.prepared is not None:
            path = Path(dom.prepared).expanduser().resolve()
            if cfg.scaling.placement == "by_domain":  # a path on the domain's own nodes, scanned there
                out[dom.name] = path
                continue
            if not (path / "manifest.json").is_file():
                raise FileNotFoundError(
                    f"domains[{dom.name}].prepared: {path}/manifest.json not found; run "
                    f"`raymh data prepare --kind {dom.kind} --root RAW --out {path}` first"
                )
            out[dom.name] = path
            continue
        root = Path(dom.root).expanduser()
        if not root.is_absolute():
            root = (synth_root / root) if synth_root is not None else root.resolve()
        if not root.is_dir():
            raise FileNotFoundError(f"domains[{dom.name}].root: {root} is not a directory (a {dom.kind} dataset)")
        target = Path(cfg.data.cache_dir).expanduser().resolve() / "prepared" / f"{dom.kind}-{_key(str(root.resolve()))}"
        if not (target / "manifest.json").is_file():
            print(f"[raymh] preparing {dom.name} ({dom.kind}) from {root} into {target} (once)", file=sys.stderr, flush=True)
            prepare_domain(kind=dom.kind, root=root, out=target, domain=dom.name, overwrite=True)
        out[dom.name] = target
    return out
