"""Using a trained model end to end (slow): `raymh predict` on Ray Data scored by `raymh eval` and by
cityscapesScripts, export checked by onnxruntime / torch.export, the MLflow pyfunc in a fresh process with no
pickle opt-in, and a Ray Serve app over real HTTP. All share the session's one tiny trained run."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner
from PIL import Image

from raymh.cli import main
from raymh.data.cache import synthetic_root
from raymh.data.labels import label_id_to_train_id_lut
from raymh.infer.formats import get_format
from raymh.infer.predict import run_predict
from raymh.train.evaluate import ConfusionMatrix

pytestmark = pytest.mark.slow

# cityscapesScripts' evalPixelLevelSemanticLabeling, run unchanged as its own __main__; its last release
# (2.3.0) calls np.in1d, which NumPy 2.4 removed: the alias restores it (np.isin is its documented successor).
OFFICIAL_EVAL = (
    "import numpy as np, runpy; np.in1d = getattr(np, 'in1d', np.isin); "
    "runpy.run_module('cityscapesscripts.evaluation.evalPixelLevelSemanticLabeling', run_name='__main__')"
)


def _read(path: Path) -> np.ndarray:
    return np.asarray(Image.open(path))


def test_predict_gives_the_predictions_eval_scores_and_the_official_tool_agrees(tiny_trained_run, tmp_path):
    import torch

    from raymh.run.eval_checkpoint import evaluate_checkpoint

    run = tiny_trained_run
    cs_root = synthetic_root(run.cfg) / "cityscapes"
    metrics = evaluate_checkpoint(str(run.outcome.run_dir))  # the run's best checkpoint, as predict picks it
    out = tmp_path / "pred"
    summary = run_predict(str(run.outcome.run_dir), domain="cityscapes", input=str(cs_root / "leftImg8bit" / "val"),
                          out=out, batch_size=2, quiet=True)  # fmt: skip
    assert summary.format == "cityscapes" and summary.written == summary.total == 4 and not summary.bad

    cm = ConfusionMatrix(19)
    lut = label_id_to_train_id_lut()
    for gt in sorted((cs_root / "gtFine" / "val").rglob("*_gtFine_labelIds.png")):
        stem = gt.name.replace("_gtFine_labelIds.png", "")
        pred = get_format("cityscapes").decode((out / gt.parent.name / f"{stem}_pred.png").read_bytes(),
                                               {"classes": _classes()})  # fmt: skip
        cm.update(torch.from_numpy(pred), torch.from_numpy(lut[_read(gt)]))
    assert cm.miou() == pytest.approx(metrics["val/miou/cityscapes"], abs=1e-12)

    export = tmp_path / "cs_eval"
    export.mkdir()
    env = {**os.environ, "CITYSCAPES_DATASET": str(cs_root), "CITYSCAPES_RESULTS": str(out),
           "CITYSCAPES_EXPORT_DIR": str(export)}  # fmt: skip
    proc = subprocess.run([sys.executable, "-c", OFFICIAL_EVAL], env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-2000:]
    official = json.loads((export / "resultPixelLevelSemanticLabeling.json").read_text())
    assert official["averageScoreClasses"] == pytest.approx(metrics["val/miou/cityscapes"], abs=1e-6)


def _classes() -> list[str]:
    from raymh.data.labels import CITYSCAPES_CLASSES

    return list(CITYSCAPES_CLASSES)


def test_predict_writes_formats_skips_existing_and_names_bad_inputs(tiny_trained_run, tmp_path):
    run = tiny_trained_run
    images = tmp_path / "in"
    shutil.copytree(synthetic_root(run.cfg) / "bdd100k" / "images" / "10k" / "val", images / "day")
    (images / "day" / "broken.jpg").write_bytes(b"\xff\xd8\xff\xe0 not really a jpeg")
    good = sorted(p.name for p in (images / "day").glob("*.jpg") if p.name != "broken.jpg")
    args = ["predict", "--model", str(run.outcome.run_dir), "--domain", "bdd100k", "--input", str(images),
            "--batch-size", "2"]  # fmt: skip

    first = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "tid"), "--format", "trainid"])
    assert first.exit_code == 1, first.output
    assert "day/broken.jpg" in first.output and "--skip-bad" in first.output
    written = sorted(p.name for p in (tmp_path / "tid" / "day").glob("*.png"))
    assert written == [n.replace(".jpg", ".png") for n in good]  # the good ones, mirrored under day/

    again = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "tid"), "--format", "trainid", "--skip-bad"])
    assert again.exit_code == 0, again.output
    assert f"{len(good)} existing skipped" in again.output and "skipped 1 unreadable input(s)" in again.output
    assert "wrote 0 label map(s)" in again.output

    trainid = {n: _read(tmp_path / "tid" / "day" / n) for n in written}
    for fmt in ("bdd100k", "color"):
        res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / fmt), "--format", fmt, "--skip-bad"])
        assert res.exit_code == 0, res.output
        for name, ids in trainid.items():
            back = get_format(fmt).decode((tmp_path / fmt / "day" / name).read_bytes(), {"classes": _classes()})
            np.testing.assert_array_equal(back, ids)  # the same classes in every readable format


def test_export_onnx_and_pt2_agree_with_pytorch(tiny_trained_run, tmp_path):
    import onnx

    from raymh.infer.export import CHECK_SIZES, EXPORT_SIZE

    assert EXPORT_SIZE not in CHECK_SIZES
    best = tiny_trained_run.outcome.best_checkpoint
    for fmt in ("onnx", "pt2"):
        out = tmp_path / f"model.{fmt}"
        res = CliRunner().invoke(main, ["export", "--model", best, "--format", fmt, "--domain", "synscapes",
                                        "--out", str(out)])  # fmt: skip
        assert res.exit_code == 0, res.output
        lines = [ln for ln in res.output.splitlines() if "max abs logit diff" in ln]
        assert len(lines) == 2, res.output
        for line in lines:  # e.g. "check 80x112: max abs logit diff 5.9e-05, argmax agreement 100.000%"
            assert float(line.rsplit(" ", 1)[-1].rstrip("%")) >= 99.9
    props = {p.key: p.value for p in onnx.load(str(tmp_path / "model.onnx"), load_external_data=False).metadata_props}
    assert json.loads(props["raymh.domains"]) == ["synscapes"]
    assert json.loads(props["raymh.classes"])["synscapes"][0] == "road"
    assert "ImageNet-normalised" in props["raymh.input_layout"] and "mean" in json.loads(props["raymh.normalization"])


def test_mlflow_model_predicts_in_a_fresh_process_without_pickle(tiny_trained_run, tmp_path):
    import mlflow

    run = tiny_trained_run
    mlflow.set_tracking_uri(run.uri)
    local = Path(mlflow.artifacts.download_artifacts(artifact_uri=run.model_uri, dst_path=str(tmp_path / "dl")))
    assert not list(local.rglob("*.pkl")), "the logged model must not hold pickles"
    images = sorted((synthetic_root(run.cfg) / "synscapes" / "img" / "rgb").glob("*.png"))[:3]
    script = textwrap.dedent(f"""
        import numpy as np, mlflow
        from PIL import Image
        model = mlflow.pyfunc.load_model({run.model_uri!r})
        paths = {[str(p) for p in images]!r}
        preds = [model.predict(np.asarray(Image.open(p).convert("RGB"))[None], params={{"domain": "synscapes"}})[0]
                 for p in paths]
        np.savez({str(tmp_path / "pyfunc.npz")!r}, *preds)
        print(model.metadata.signature.to_dict())
    """)  # fmt: skip
    env = {**os.environ, "MLFLOW_TRACKING_URI": run.uri, "MLFLOW_ALLOW_PICKLE_DESERIALIZATION": "false"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=600,
                          cwd=tmp_path)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "uint8" in proc.stdout and "domain" in proc.stdout  # the signature: uint8 images, a domain param

    pred_dir = tmp_path / "predict"
    for p in images:
        (tmp_path / "in").mkdir(exist_ok=True)
        shutil.copy(p, tmp_path / "in" / p.name)
    summary = run_predict(run.model_uri, domain="synscapes", input=str(tmp_path / "in"), out=pred_dir,
                          fmt="trainid", tracking_uri=run.uri, quiet=True)  # fmt: skip
    assert summary.written == len(images)
    got = np.load(tmp_path / "pyfunc.npz")
    for i, p in enumerate(images):
        np.testing.assert_array_equal(got[f"arr_{i}"], _read(pred_dir / p.name))


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_serve_answers_like_predict_and_survives_bad_requests(tiny_trained_run, tmp_path):
    import httpx
    from ray import serve

    from raymh.infer.serve import build_app

    run = tiny_trained_run
    image = sorted((synthetic_root(run.cfg) / "cityscapes" / "leftImg8bit" / "val").rglob("*.png"))[0]
    (tmp_path / "in").mkdir()
    shutil.copy(image, tmp_path / "in" / image.name)
    run_predict(str(run.outcome.run_dir), domain="cityscapes", input=str(tmp_path / "in"), out=tmp_path / "out",
                fmt="trainid", quiet=True)  # fmt: skip
    expected = _read(tmp_path / "out" / image.name)

    port = _free_port()
    serve.start(http_options={"host": "127.0.0.1", "port": port})
    try:
        serve.run(build_app(str(run.outcome.run_dir), tracking_uri=run.uri), name="raymh-test", route_prefix="/")
        url = f"http://127.0.0.1:{port}"
        with httpx.Client(timeout=120) as client:
            domains = client.get(f"{url}/domains").json()
            assert set(domains) == {"cityscapes", "bdd100k", "synscapes"} and domains["bdd100k"]["classes"][0] == "road"
            ok = client.post(f"{url}/predict", params={"domain": "cityscapes"}, content=image.read_bytes())
            assert ok.status_code == 200 and ok.headers["content-type"] == "image/png"
            np.testing.assert_array_equal(np.asarray(Image.open(io.BytesIO(ok.content))), expected)
            bad_domain = client.post(f"{url}/predict", params={"domain": "mars"}, content=image.read_bytes())
            assert bad_domain.status_code == 400 and "mars" in bad_domain.json()["error"]
            not_image = client.post(f"{url}/predict", params={"domain": "cityscapes"}, content=b"hello")
            assert not_image.status_code == 415 and "PNG or JPEG" in not_image.json()["error"]
            again = client.post(f"{url}/predict", params={"domain": "cityscapes", "format": "color"},
                                content=image.read_bytes())  # fmt: skip
            assert again.status_code == 200
            colour = Image.open(io.BytesIO(again.content))
            assert colour.mode == "P"
            np.testing.assert_array_equal(np.asarray(colour), expected)  # palette indices are the class ids
    finally:
        serve.shutdown()
