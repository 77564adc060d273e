"""`raymh export`: the model as ONNX (torch.onnx dynamo exporter) or a torch.export ExportedProgram (pt2).

The exported graph takes ImageNet-normalised float32 images (N, 3, H, W), RGB, H and W multiples of 16,
with batch, height and width dynamic, and returns full-resolution logits (N, C_d, H, W) per exported domain
(one output per domain, the trunk shared). Everything a consumer needs to prepare inputs and read outputs
(domains, class names, palettes, normalisation, input layout) is in the ONNX `metadata_props`, or in the pt2
archive's extra file `raymh.json`. The command checks its own output against PyTorch before it succeeds.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from raymh.infer.loading import ModelBundle, load_bundle

SIZE_MULTIPLE = 16
EXPORT_SIZE = (64, 96)  # the example traced during export (batch 2); the checks use other sizes
CHECK_SIZES = ((80, 112), (128, 96))
MIN_AGREEMENT = 0.999


class ExportedSegmentation(nn.Module):
    """Trunk once, then each domain's head, logits upsampled to the input size; a tuple, one per domain."""

    def __init__(self, model: nn.Module, domains: list[str]) -> None:
        super().__init__()
        self.model, self.domains = model, list(domains)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        features = self.model.trunk(x)
        return tuple(
            F.interpolate(self.model.heads[d](features)["logits"], size=x.shape[-2:], mode="bilinear", align_corners=False)
            for d in self.domains
        )


@dataclass
class CheckResult:
    size: tuple[int, int]
    max_abs_diff: float
    agreement: float


def export_metadata(bundle: ModelBundle, domains: list[str]) -> dict[str, str]:
    """String key/values for ONNX metadata_props (JSON where structured)."""
    info = bundle.info
    return {
        "raymh.version": str(info.get("raymh_version")),
        "raymh.domains": json.dumps(domains),
        "raymh.outputs": json.dumps([f"logits_{d}" for d in domains]),
        "raymh.classes": json.dumps({d: bundle.domain(d)["classes"] for d in domains}),
        "raymh.palette": json.dumps({d: bundle.domain(d)["palette"] for d in domains}),
        "raymh.label_format": json.dumps({d: bundle.domain(d).get("label_format") for d in domains}),
        "raymh.normalization": json.dumps(info["normalization"]),
        "raymh.input_layout": (
            f"image: float32 (N, 3, H, W) RGB, ImageNet-normalised ((x / 255 - mean) / std), H and W multiples of "
            f"{SIZE_MULTIPLE}; outputs: float32 logits (N, C, H, W) per domain, argmax over C gives train ids"
        ),
        "raymh.model": json.dumps(info["model"]),
    }


def _dynamic_shapes() -> dict[str, dict[int, Any]]:
    from torch.export import Dim

    batch = Dim("batch", min=1, max=1024)
    h, w = Dim("h16", min=1, max=1024), Dim("w16", min=1, max=1024)
    return {"x": {0: batch, 2: SIZE_MULTIPLE * h, 3: SIZE_MULTIPLE * w}}


def _example() -> torch.Tensor:
    return torch.randn(2, 3, *EXPORT_SIZE, generator=torch.Generator().manual_seed(0))


def export_onnx(wrapper: ExportedSegmentation, path: Path, metadata: dict[str, str]) -> None:
    import onnx

    torch.onnx.export(
        wrapper, (_example(),), str(path), dynamo=True, dynamic_shapes=_dynamic_shapes(),
        input_names=["image"], output_names=[f"logits_{d}" for d in wrapper.domains], external_data=False, verbose=False,
    )  # fmt: skip
    model = onnx.load(str(path))
    onnx.helper.set_model_props(model, metadata)
    onnx.save(model, str(path))


def export_pt2(wrapper: ExportedSegmentation, path: Path, metadata: dict[str, str]) -> None:
    program = torch.export.export(wrapper, (_example(),), dynamic_shapes=_dynamic_shapes())
    torch.export.save(program, str(path), extra_files={"raymh.json": json.dumps(metadata)})


def runner(fmt: str, path: Path):
    """A function images -> list of logits arrays, running the exported file as its own runtime does."""
    if fmt == "onnx":
        import onnxruntime as ort

        session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        name = session.get_inputs()[0].name
        return lambda x: session.run(None, {name: x.numpy()})
    module = torch.export.load(str(path)).module()
    return lambda x: [o.detach().numpy() for o in module(x)]


def check_export(wrapper: ExportedSegmentation, fmt: str, path: Path, sizes=CHECK_SIZES) -> list[CheckResult]:
    """The exported file against PyTorch on the same random images at `sizes` (not the export's example)."""
    run = runner(fmt, path)
    results = []
    gen = torch.Generator().manual_seed(1)
    for h, w in sizes:
        x = torch.randn(1, 3, h, w, generator=gen)
        with torch.inference_mode():
            ref = [o.numpy() for o in wrapper(x)]
        got = run(x)
        diff = max(float(np.abs(r - g).max()) for r, g in zip(ref, got, strict=True))
        same = sum(int((r.argmax(1) == g.argmax(1)).sum()) for r, g in zip(ref, got, strict=True))
        total = sum(r.shape[0] * r.shape[2] * r.shape[3] for r in ref)
        results.append(CheckResult((h, w), diff, same / total))
    return results


def run_export(
    model: str, *, fmt: str, out: str | Path, domain: str = "all", tracking_uri: str | None = None, quiet: bool = False
) -> list[CheckResult]:
    """Export, then check; raises RuntimeError when the check fails (argmax agreement below 99.9%)."""
    if fmt not in ("onnx", "pt2"):
        raise ValueError(f"--format {fmt!r}: choose onnx or pt2")
    say = (lambda m: None) if quiet else (lambda m: print(f"[raymh] {m}", flush=True))
    bundle = load_bundle(model, tracking_uri=tracking_uri)
    domains = list(bundle.domains) if domain == "all" else [domain]
    for d in domains:
        bundle.domain(d)
    out = Path(out).expanduser()
    out.parent.mkdir(parents=True, exist_ok=True)
    wrapper = ExportedSegmentation(bundle.build(), domains).eval()
    say(f"exporting {bundle.source} ({', '.join(domains)}) to {fmt}: {out}")
    t0 = time.perf_counter()
    with torch.no_grad():
        (export_onnx if fmt == "onnx" else export_pt2)(wrapper, out, export_metadata(bundle, domains))
    say(f"exported in {time.perf_counter() - t0:.1f}s; checking against PyTorch at sizes "
        f"{', '.join(f'{h}x{w}' for h, w in CHECK_SIZES)} (exported at {EXPORT_SIZE[0]}x{EXPORT_SIZE[1]})")
    results = check_export(wrapper, fmt, out)
    for r in results:
        say(f"check {r.size[0]}x{r.size[1]}: max abs logit diff {r.max_abs_diff:.3g}, "
            f"argmax agreement {100 * r.agreement:.3f}%")
    worst = min(r.agreement for r in results)
    if worst < MIN_AGREEMENT:
        raise RuntimeError(
            f"{out}: the exported {fmt} model disagrees with PyTorch on {100 * (1 - worst):.2f}% of pixels "
            f"(need >= {100 * MIN_AGREEMENT:.1f}% agreement); the file is kept for inspection"
        )
    say(f"wrote {out} ({out.stat().st_size / 2**20:.1f} MiB)")
    return results
