"""DCLoss forward+backward vs the plain matmul baseline and the dense reference (the targets in docs/decisions.md).

Cases, each at the Cityscapes per-worker size (n=7938 anchors, N=129600 negatives, D=128, 19 classes) and a
small size: (a) raymh's streamed `directional_contrastive_loss`, (b) the dense reference of the formula
(raymh/losses/dense_reference.py; skipped where its n x N matrices would not fit), (c) the matmul baseline: for each
side, S = anchors @ negatives^T then S @ negatives with ALL n anchors, chunked over negatives (the forward
and gradient products with no exp, masks or reductions). Inputs: random unit vectors, c ~ U(0,1).

Time: median of --repeats runs after one warm-up, cases interleaved in one process (fair under load).
Peak memory beyond the inputs: on cuda torch.cuda.max_memory_allocated; on cpu each case runs in a fresh
subprocess that allocates the inputs, resets the kernel's peak-RSS counter (/proc/self/clear_refs) and reads
VmHWM after one forward+backward (with --no-isolate: the same, in this process).

    python benchmarks/bench_dcloss.py --device cpu
The last line is `dcloss: time_vs_matmul=<ratio> peak_mib=<MiB>` for the Cityscapes size.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from raymh.losses import directional_contrastive_loss  # noqa: E402

CASES = ("dcloss", "matmul", "dense")


def make_inputs(*, n: int, n_neg: int, dim: int, classes: int, device: str, seed: int = 0) -> dict:
    """Random unit anchors/negatives, labels in [0, classes), confidences ~ U(0, 1)."""
    gen = torch.Generator().manual_seed(seed)

    def unit(rows: int) -> torch.Tensor:
        x = torch.randn(rows, dim, generator=gen)
        return (x / x.norm(dim=1, keepdim=True)).to(device)

    return {
        "a1": unit(n).requires_grad_(),
        "a2": unit(n).requires_grad_(),
        "y1": torch.randint(classes, (n,), generator=gen).to(device),
        "y2": torch.randint(classes, (n,), generator=gen).to(device),
        "c1": torch.rand(n, generator=gen).to(device),
        "c2": torch.rand(n, generator=gen).to(device),
        "neg": unit(n_neg),
        "neg_labels": torch.randint(classes, (n_neg,), generator=gen).to(device),
    }


def run_case(
    case: str, x: dict, *, temperature: float, gamma: float, chunk_size: int | None, base_chunk: int
):
    """One forward+backward of a case."""
    for key in ("a1", "a2"):
        x[key].grad = None
    if case == "dcloss":
        loss = directional_contrastive_loss(
            x["a1"], x["a2"], x["y1"], x["y2"], x["c1"], x["c2"], x["neg"], x["neg_labels"],
            temperature=temperature, gamma=gamma, chunk_size=chunk_size,
        )  # fmt: skip
        loss.backward()
    elif case == "dense":
        from raymh.losses.dense_reference import dense_dcloss

        loss = dense_dcloss(
            x["a1"], x["a2"], x["y1"], x["y2"], x["c1"], x["c2"], x["neg"], x["neg_labels"],
            temperature=temperature, gamma=gamma,
        )  # fmt: skip
        loss.backward()
    elif case == "matmul":
        neg = x["neg"]
        with torch.no_grad():
            for anchors in (x["a1"], x["a2"]):
                acc = torch.zeros_like(anchors)
                for c0 in range(0, neg.shape[0], base_chunk):
                    nb = neg[c0 : c0 + base_chunk]
                    acc.addmm_(anchors @ nb.T, nb)
    else:
        raise ValueError(f"unknown case {case!r}; expected one of {CASES}")
    if x["neg"].is_cuda:
        torch.cuda.synchronize()


def _rss_kib(field: str) -> int:
    """VmRSS / VmHWM of this process in KiB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1])
    raise RuntimeError(f"{field} not in /proc/self/status")


def peak_mib(case: str, args: argparse.Namespace, size: dict) -> float:
    """Peak memory of one forward+backward beyond the inputs, in MiB (this process)."""
    x = make_inputs(**size, device=args.device)
    kw = dict(
        temperature=args.temperature, gamma=args.gamma, chunk_size=args.chunk_size, base_chunk=args.base_chunk
    )
    if args.device == "cuda":
        torch.cuda.synchronize()
        before = torch.cuda.memory_allocated()
        torch.cuda.reset_peak_memory_stats()
        run_case(case, x, **kw)
        return (torch.cuda.max_memory_allocated() - before) / 2**20
    Path("/proc/self/clear_refs").write_text("5")  # reset the peak RSS (VmHWM) to the current RSS
    before = _rss_kib("VmRSS")
    run_case(case, x, **kw)
    return (_rss_kib("VmHWM") - before) / 1024


def peak_mib_isolated(case: str, args: argparse.Namespace, size: dict) -> float:
    """peak_mib in a fresh subprocess (so nothing freed earlier hides in this process's RSS)."""
    cmd = [sys.executable, __file__, "--worker", case, "--device", args.device]
    cmd += ["--n", str(size["n"]), "--N", str(size["n_neg"]), "--dim", str(size["dim"])]
    cmd += [
        "--classes",
        str(size["classes"]),
        "--gamma",
        str(args.gamma),
        "--temperature",
        str(args.temperature),
    ]
    cmd += ["--base-chunk", str(args.base_chunk), "--threads", str(torch.get_num_threads())]
    if args.chunk_size is not None:
        cmd += ["--chunk-size", str(args.chunk_size)]
    out = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    return float(json.loads(out.strip().splitlines()[-1])["peak_mib"])


def dense_fits(args: argparse.Namespace, size: dict) -> tuple[bool, float]:
    """Whether the dense reference's ~4 live n x N fp32 matrices per side fit under --dense-limit-gib."""
    need_gib = 4 * size["n"] * size["n_neg"] * 4 / 2**30
    return need_gib <= args.dense_limit_gib, need_gib


def bench_size(label: str, size: dict, args: argparse.Namespace) -> dict:
    """Median time and peak memory of every case at one size; prints one line per case and the ratios."""
    fits, need_gib = dense_fits(args, size)
    cases = [c for c in CASES if c != "dense" or fits]
    x = make_inputs(**size, device=args.device)
    kw = dict(
        temperature=args.temperature, gamma=args.gamma, chunk_size=args.chunk_size, base_chunk=args.base_chunk
    )
    times: dict[str, list[float]] = {c: [] for c in cases}
    for rep in range(args.repeats + 1):  # the first round is the warm-up
        for case in cases:
            start = time.perf_counter()
            run_case(case, x, **kw)
            if rep:
                times[case].append(time.perf_counter() - start)
    del x
    result = {}
    head = f"{label}: n={size['n']} N={size['n_neg']} D={size['dim']} classes={size['classes']} device={args.device}"
    print(head, flush=True)
    isolate = args.isolate and args.device == "cpu"  # cuda's peak counter is exact in-process
    for case in cases:
        peak = peak_mib_isolated(case, args, size) if isolate else peak_mib(case, args, size)
        med = statistics.median(times[case])
        result[case] = {"time_s": med, "peak_mib": peak}
        print(
            f"  {case:7s} time {med:8.3f} s (median of {len(times[case])})  peak beyond inputs {peak:8.1f} MiB"
        )
    if not fits:
        print(f"  dense   skipped: needs ~{need_gib:.1f} GiB > --dense-limit-gib {args.dense_limit_gib}")
    ratio = result["dcloss"]["time_s"] / result["matmul"]["time_s"]
    line = f"  ratios: dcloss time_vs_matmul={ratio:.3f}"
    if "dense" in result:
        line += f" dense_vs_dcloss={result['dense']['time_s'] / result['dcloss']['time_s']:.2f}"
    print(line, flush=True)
    result["time_vs_matmul"] = ratio
    return result


def sweep_chunks(size: dict, args: argparse.Namespace) -> dict[int, float]:
    """Time of the loss at several chunk sizes vs the matmul baseline (interleaved); returns chunk -> ratio."""
    x = make_inputs(**size, device=args.device)
    kw = dict(temperature=args.temperature, gamma=args.gamma, base_chunk=args.base_chunk)
    times: dict = {c: [] for c in [*args.sweep_chunks, "matmul"]}
    for rep in range(args.repeats + 1):
        for chunk in times:
            start = time.perf_counter()
            run_case(
                "matmul" if chunk == "matmul" else "dcloss",
                x,
                chunk_size=None if chunk == "matmul" else chunk,
                **kw,
            )
            if rep:
                times[chunk].append(time.perf_counter() - start)
    base = statistics.median(times.pop("matmul"))
    print(f"chunk sweep at n={size['n']} N={size['n_neg']}: matmul baseline {base:.3f} s", flush=True)
    ratios = {}
    for chunk, ts in times.items():
        ratios[chunk] = statistics.median(ts) / base
        print(
            f"  chunk {chunk:6d}: {statistics.median(ts):8.3f} s  time_vs_matmul={ratios[chunk]:.3f}",
            flush=True,
        )
    return ratios


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    """Command-line flags (sizes, device, repeats)."""
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--device", choices=["cpu", "cuda"], default="cpu")
    p.add_argument("--n", type=int, default=7938, help="anchors at the Cityscapes per-worker size")
    p.add_argument("--N", type=int, default=129600, dest="n_neg", help="negatives at the Cityscapes size")
    p.add_argument("--small-n", type=int, default=1000)
    p.add_argument("--small-N", type=int, default=16000, dest="small_n_neg")
    p.add_argument("--dim", type=int, default=128)
    p.add_argument("--classes", type=int, default=19)
    p.add_argument("--temperature", type=float, default=0.1)
    p.add_argument("--gamma", type=float, default=0.75)
    p.add_argument("--chunk-size", type=int, default=None, help="DCLoss chunk (default: the loss's own)")
    p.add_argument("--base-chunk", type=int, default=4096, help="negatives per chunk of the matmul baseline")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--threads", type=int, default=None, help="torch.set_num_threads (default: torch's)")
    p.add_argument("--dense-limit-gib", type=float, default=None, help="default 3 on cpu, 40 on cuda")
    p.add_argument("--no-isolate", dest="isolate", action="store_false", help="measure memory in-process")
    p.add_argument("--skip-small", action="store_true")
    p.add_argument(
        "--sweep-chunks",
        type=lambda v: [int(c) for c in v.split(",")],
        default=[],
        help="also time the loss at these chunk sizes (comma-separated) at the Cityscapes size",
    )
    p.add_argument("--worker", choices=CASES, default=None, help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.dense_limit_gib is None:
        args.dense_limit_gib = 40.0 if args.device == "cuda" else 3.0
    if args.device == "cuda" and not torch.cuda.is_available():
        p.error("--device cuda but torch.cuda.is_available() is False")
    return args


def main(argv: list[str] | None = None) -> dict:
    """Run the benchmark; returns {"small": ..., "cityscapes": ...} results and prints the summary line."""
    args = parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    size = {"n": args.n, "n_neg": args.n_neg, "dim": args.dim, "classes": args.classes}
    if args.worker:
        print(json.dumps({"peak_mib": peak_mib(args.worker, args, size)}))
        return {}
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, device {args.device}", flush=True)
    results = {}
    if args.sweep_chunks:
        results["sweep"] = sweep_chunks(size, args)
    if not args.skip_small:
        small = {"n": args.small_n, "n_neg": args.small_n_neg, "dim": args.dim, "classes": args.classes}
        results["small"] = bench_size("small", small, args)
    results["cityscapes"] = bench_size("cityscapes", size, args)
    main_result = results["cityscapes"]
    print(
        f"dcloss: time_vs_matmul={main_result['time_vs_matmul']:.3f} peak_mib={main_result['dcloss']['peak_mib']:.1f}"
    )
    return results


if __name__ == "__main__":
    main()
