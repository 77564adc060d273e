"""End-to-end training on Ray (slow): real Ray Train workers, real Ray Data, a real MLflow store."""

from __future__ import annotations

import json
import math
import os
import signal
import threading
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from raymh.config import load_config
from raymh.run.driver import fit
from raymh.train.checkpoint import read_state
from tests.conftest import tiny_overrides

pytestmark = pytest.mark.slow


def _history(uri: str, run_id: str, key: str) -> list[tuple[int, float]]:
    return sorted((m.step, m.value) for m in MlflowClient(uri).get_metric_history(run_id, key))


def ray_local_address() -> str:
    import ray

    return ray.get_runtime_context().gcs_address  # this session's Ray, even beside other local clusters


def _checkpoint_steps(run_dir: Path) -> list[int]:
    steps = []
    for path in run_dir.glob("checkpoint_*/metrics.json"):
        try:
            steps.append(json.loads(path.read_text())["step"])
        except (OSError, ValueError, KeyError):
            continue
    return steps


def _kill_a_worker_after_first_checkpoint(run_dir: Path, killed: list, min_step: int = 1) -> threading.Thread:
    """Wait for a checkpoint of step >= min_step, then SIGKILL one Ray Train worker found with Ray's state API."""
    import ray
    from ray.util.state import list_actors

    address = ray.get_runtime_context().gcs_address  # this session's Ray, even beside other local clusters

    def go():
        deadline = time.time() + 300
        while time.time() < deadline and not [s for s in _checkpoint_steps(run_dir) if s >= min_step]:
            time.sleep(0.2)
        while time.time() < deadline and not killed:  # the state API can time out on a loaded machine
            try:
                alive = list_actors(address=address, filters=[("state", "=", "ALIVE")], timeout=60)
            except Exception:  # noqa: BLE001
                time.sleep(1)
                continue
            workers = [a for a in alive if "TrainWorker" in a.class_name]
            if workers:
                os.kill(workers[0].pid, signal.SIGKILL)
                killed.append(workers[0].pid)
            else:
                time.sleep(0.5)

    thread = threading.Thread(target=go, daemon=True)
    thread.start()
    return thread


def test_two_workers_lower_the_loss_and_log_to_mlflow(ray_local, e2e_root):
    # decoded by Ray tasks beside the workers (data.transforms_on: tasks; the other runs here decode in the
    # worker, one in Ray Data's tasks)
    cfg = load_config(
        "quickstart",
        tiny_overrides(e2e_root, **{"scaling.num_workers": 2, "train.iters": 12, "train.eval_every": 6,
                                    "loss.dc_weight": 0.1, "optim.lr": 0.002, "tracking.log_model": True,
                                    "data.transforms_on": "tasks"}),
    )  # fmt: skip
    out = fit(cfg)
    assert out.ok, out.error
    from ray.util.state import list_tasks

    decoded = list_tasks(address=ray_local_address(), filters=[("name", "=", "raymh-decode:synscapes.unlabeled")],
                         limit=1000, timeout=60)  # fmt: skip
    assert any(t.state == "FINISHED" for t in decoded), decoded  # (tasks still in flight at the end are dropped)
    uri, client = cfg.tracking.tracking_uri, MlflowClient(cfg.tracking.tracking_uri)
    run = client.get_run(out.mlflow_run_id)
    assert run.info.status == "FINISHED"
    assert (
        run.data.params["scaling.num_workers"] == "2"
        and run.data.tags["domains"] == "cityscapes,bdd100k,synscapes"
    )
    assert {"val/miou/cityscapes", "val/miou/bdd100k", "val/miou/synscapes", "val/miou_mean"} <= set(
        run.data.metrics
    )
    assert {"train/dc/cityscapes", "train/passing/bdd100k", "train/lr", "train/images_per_s"} <= set(
        run.data.metrics
    )
    losses = [v for _, v in _history(uri, out.mlflow_run_id, "train/ce/cityscapes")]
    assert len(losses) == 12
    assert sum(losses[-3:]) / 3 < sum(losses[:3]) / 3  # it learns
    assert {"config", "splits", "eval"} <= {a.path for a in client.list_artifacts(out.mlflow_run_id)}
    # what it trained on, as the MLflow run page shows it: datasets, source, description, the labeled digest
    inputs = {d.dataset.name: d for d in run.inputs.dataset_inputs}
    assert set(inputs) == {f"{d}.{p}" for d in ("cityscapes", "bdd100k", "synscapes") for p in ("labeled", "unlabeled", "val")}
    contexts = {d.dataset.name: {t.key: t.value for t in d.tags}["mlflow.data.context"] for d in inputs.values()}
    assert contexts["bdd100k.val"] == "val" and contexts["cityscapes.unlabeled"] == "unlabeled"
    assert len({d.dataset.digest for d in inputs.values()}) == 9
    assert run.data.tags["mlflow.source.type"] == "LOCAL" and run.data.tags["mlflow.source.name"].startswith("raymh")
    assert "| **mean** |" in run.data.tags["mlflow.note.content"]
    assert len(run.data.tags["raymh.labeled_digest"]) == 16 and "raymh.labeled_digest.bdd100k" in run.data.tags
    panels = client.list_artifacts(out.mlflow_run_id, "eval/step_000012/panels")
    assert {p.path.rsplit("/", 1)[-1] for p in panels} == {"cityscapes.png", "bdd100k.png", "synscapes.png"}
    assert read_state(out.checkpoint)["step"] == 12
    import mlflow
    import numpy as np

    mlflow.set_tracking_uri(uri)
    model = mlflow.pyfunc.load_model(f"runs:/{out.mlflow_run_id}/model")  # the best model, logged by the driver
    labels = model.predict(np.zeros((1, 64, 96, 3), np.uint8), params={"domain": "bdd100k"})
    assert labels.shape == (1, 64, 96) and labels.dtype == np.uint8 and labels.max() < 19


def test_killed_worker_recovers_from_the_last_step_checkpoint(ray_local, e2e_root):
    """An elastic run (scaling.num_workers [1, 2], global batches 2 per domain) loses a worker mid-run: Ray Train
    restarts the group with as many workers as fit, from the last checkpoint; the run ends at the same step."""
    cfg = load_config(
        "quickstart",
        tiny_overrides(e2e_root, **{"train.iters": 20, "train.eval_every": 20, "train.checkpoint_every": 3,
                                    "train.max_failures": 1, "tracking.run_name": "killed", "loss.dc_weight": 0.0,
                                    "scaling.num_workers": "[1, 2]", "data.labeled_batch_size": 2,
                                    "data.unlabeled_batch_size": 2}),
    )  # fmt: skip
    assert cfg.scaling.elastic
    killed: list[int] = []
    thread = _kill_a_worker_after_first_checkpoint(Path(cfg.tracking.storage_path) / "killed", killed, min_step=4)
    out = fit(cfg)
    thread.join(timeout=5)
    assert killed, "no Ray Train worker was found to kill"
    assert out.ok, out.error
    assert read_state(out.checkpoint)["step"] == 20  # the same final step count
    uri = cfg.tracking.tracking_uri
    lrs = _history(uri, out.mlflow_run_id, "train/lr")
    steps = [s for s, _ in lrs]
    assert steps[-1] == 20 and set(range(1, 21)) <= set(steps)  # no gap
    repeated = sorted({s for s in steps if steps.count(s) > 1})
    assert repeated, "the kill came after the last step: nothing was redone, the test saw no recovery"
    resumed_from = repeated[0] - 1
    # the worker group came back from a checkpoint between evaluations (the only evaluation is the last
    # step), not from step 0, and redid at most checkpoint_every steps
    assert resumed_from % 3 == 0 and 0 < resumed_from < 20, repeated
    assert len(steps) - len(set(steps)) <= 3
    for step, lr in lrs:  # the poly schedule continued from the checkpoint's step on both worker groups
        assert lr == pytest.approx(cfg.optim.lr * (1 - step / 20) ** cfg.optim.poly_power, rel=1e-9, abs=1e-15)
    losses = _history(uri, out.mlflow_run_id, "train/loss")
    assert {s for s, _ in losses} == set(steps) and all(math.isfinite(v) for _, v in losses)
    worlds = _history(uri, out.mlflow_run_id, "train/world_size")  # what each worker group ran with
    assert {s for s, _ in worlds} == set(steps) and {w for _, w in worlds} <= {1.0, 2.0}
    after = [w for s, w in worlds if s > resumed_from]
    print(f"elastic kill: resumed from step {resumed_from}; world sizes before {sorted({w for s, w in worlds if s <= resumed_from})}, "
          f"after {sorted(set(after))}")


def test_resume_continues_the_step_count_and_lr_schedule_exactly(ray_local, e2e_root):
    over = {"train.iters": 24, "train.eval_every": 12, "train.checkpoint_every": 4, "train.max_failures": 0,
            "tracking.run_name": "cut",
            "loss.dc_weight": 0.0, "optim.lr": 0.01}  # fmt: skip
    cfg = load_config("quickstart", tiny_overrides(e2e_root, **over))
    killed: list[int] = []
    thread = _kill_a_worker_after_first_checkpoint(Path(cfg.tracking.storage_path) / "cut", killed)
    first = fit(cfg)
    thread.join(timeout=5)
    assert killed and not first.ok  # interrupted, checkpoints kept
    with pytest.raises(Exception, match="already exists"):
        fit(cfg)  # re-using a name is refused: never a silent resume
    resumed = fit(cfg, resume="cut")
    assert resumed.ok, resumed.error
    assert resumed.mlflow_run_id == first.mlflow_run_id  # the same MLflow run goes on
    assert read_state(resumed.checkpoint)["step"] == 24
    history = _history(cfg.tracking.tracking_uri, resumed.mlflow_run_id, "train/lr")
    assert {s for s, _ in history} == set(range(1, 25))
    for step, lr in history:  # poly 0.9 per iteration, continued exactly across the resume
        assert lr == pytest.approx(0.01 * (1 - step / 24) ** 0.9, rel=1e-9, abs=1e-15)


def test_nan_loss_stops_with_the_step_and_domain_and_keeps_checkpoints(ray_local, e2e_root):
    cfg = load_config(
        "quickstart",
        tiny_overrides(e2e_root, **{"optim.lr": 1.0e12, "train.iters": 12, "train.eval_every": 1,
                                    "loss.dc_weight": 0.0}),
    )  # fmt: skip
    out = fit(cfg)
    assert not out.ok
    assert "non-finite Mix Loss at step" in out.error and "ce/" in out.error
    assert list(out.run_dir.glob("checkpoint_*/state.pt")), "checkpoints written before the NaN are kept"
    assert MlflowClient(cfg.tracking.tracking_uri).get_run(out.mlflow_run_id).info.status == "FAILED"


def _eval_loop(config: dict) -> None:
    """For each `model.sync_bn` setting: train a few steps on this rank's own random batches (so each rank's
    BatchNorm statistics would follow its own data), then score this rank's val share through the worker's
    evaluation; rank 0 reports each setting's scores and weights."""
    import tempfile

    import ray.train
    import torch

    from raymh.config import config_from_dict
    from raymh.train.checkpoint import unwrap
    from raymh.train.step import dc_weight_at, mix_loss_step
    from raymh.train.worker import _evaluate, setup_replica

    ctx = ray.train.get_context()
    rank, world = ctx.get_world_rank(), ctx.get_world_size()
    domains = config["domains"]
    with tempfile.TemporaryDirectory() as tmp:
        for sync_bn in config["sync_bn"]:
            cfg = config_from_dict({**config["experiment"], "model": {**config["experiment"]["model"], "sync_bn": sync_bn}})
            replica = setup_replica(cfg, domains, rank=rank, world=world)
            model = replica.model
            g = torch.Generator().manual_seed(100 + rank)
            model.train()
            for step in range(3):
                batch = {
                    d: {"labeled": {
                        "image": torch.randint(0, 256, (2, 3, 64, 64), dtype=torch.uint8, generator=g) // (1 + rank),
                        "label": torch.randint(0, info["num_classes"], (2, 64, 64), generator=g),
                    }, "unlabeled": {}}
                    for d, info in domains.items()
                }  # fmt: skip
                out = mix_loss_step(model, batch, cfg, step=step, dc_weight=dc_weight_at(step, cfg.loss))
                replica.optimizer.zero_grad()
                out.loss.backward()
                replica.optimizer.step()
            model.eval()
            metrics = _evaluate(model, cfg, domains, torch.device("cpu"), None, False, rank, world, 3, None,
                                val_rows=config["val_rows"])
            (Path(tmp) / f"metrics-{sync_bn}.json").write_text(json.dumps(metrics))
            torch.save(unwrap(model).state_dict(), Path(tmp) / f"weights-{sync_bn}.pt")
        ckpt = ray.train.Checkpoint.from_directory(tmp) if rank == 0 else None
        ray.train.report({"done": 1}, checkpoint=ckpt)


def test_evaluation_with_two_workers_equals_one(ray_local, e2e_root, tmp_path):
    """A model trained on 2 workers scores the same on 2 workers as its weights on 1: BatchNorm over all
    workers (sync_bn auto), or rank 0's statistics given to every rank before evaluating (sync_bn false).
    Before either, each rank evaluated with the running statistics of its own batches. Both settings train
    in one 2-worker group; the 1-worker reference is the same evaluation in this process."""
    import sys

    import ray.train
    import torch
    from ray import cloudpickle
    from ray.train.torch import TorchTrainer

    from raymh.config import config_from_dict
    from raymh.run.driver import domain_sets
    from raymh.train.worker import _evaluate, setup_replica

    cloudpickle.register_pickle_by_value(sys.modules[__name__])  # workers cannot import the tests package
    cfg = load_config(
        "quickstart",
        tiny_overrides(e2e_root, **{"train.precision": "fp32", "train.panels": 0, "loss.dc_weight": 0.0}),
    )  # fmt: skip
    data = domain_sets(cfg)
    domains = {n: {"num_classes": dd.num_classes, "classes": list(dd.manifest["classes"]),
                   "palette": dd.manifest["palette"]} for n, dd in data.items()}  # fmt: skip
    val_rows = {n: dd.val for n, dd in data.items()}
    settings = ["auto", False]
    trainer = TorchTrainer(
        _eval_loop,
        train_loop_config={"experiment": cfg.model_dump(mode="json"), "domains": domains, "sync_bn": settings,
                           "val_rows": val_rows},  # fmt: skip
        scaling_config=ray.train.ScalingConfig(num_workers=2, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name="eval2", storage_path=str(tmp_path)),
    )
    with trainer.fit().checkpoint.as_directory() as d:
        two = {s: json.loads((Path(d) / f"metrics-{s}.json").read_text()) for s in settings}
        weights = {s: torch.load(Path(d) / f"weights-{s}.pt", weights_only=True) for s in settings}
    for sync_bn in settings:
        one_cfg = config_from_dict({**cfg.model_dump(mode="json"), "model": {**cfg.model.model_dump(), "sync_bn": sync_bn}})
        replica = setup_replica(one_cfg, domains, rank=0, world=1, prepare=lambda m, parallel_strategy_kwargs: m)
        replica.model.load_state_dict(weights[sync_bn])
        replica.model.eval()
        one = _evaluate(replica.model, one_cfg, domains, torch.device("cpu"), None, False, 0, 1, 3, None,
                        val_rows=val_rows)
        scores = {k: v for k, v in one.items() if k.startswith("val/miou/")}
        assert scores and all(0.0 <= v <= 1.0 for v in scores.values())
        assert {k: two[sync_bn][k] for k in scores} == scores, sync_bn


COARSE = {  # Cityscapes' 7 categories, as a custom `folder` dataset with its own classes
    "flat": ["road", "sidewalk", "parking", "rail track"],
    "construction": ["building", "wall", "fence", "guard rail", "bridge", "tunnel"],
    "object": ["pole", "polegroup", "traffic light", "traffic sign"],
    "nature": ["vegetation", "terrain"],
    "sky": ["sky"],
    "human": ["person", "rider"],
    "vehicle": ["car", "truck", "bus", "caravan", "trailer", "train", "motorcycle", "bicycle"],
}


def _coarse_folder_dataset(cityscapes_root: Path, out: Path) -> None:
    import numpy as np
    import yaml
    from PIL import Image

    from raymh.data.labels import LABEL_ID

    lut = np.full(256, 255, dtype=np.uint8)
    for i, names in enumerate(COARSE.values()):
        for name in names:
            lut[LABEL_ID[name]] = i
    for split in ("train", "val"):
        (out / "images" / split).mkdir(parents=True)
        (out / "labels" / split).mkdir(parents=True)
        for img in sorted((cityscapes_root / "leftImg8bit" / split).rglob("*_leftImg8bit.png")):
            stem = img.name.replace("_leftImg8bit.png", "")
            lab = next((cityscapes_root / "gtFine" / split).rglob(f"{stem}_gtFine_labelIds.png"))
            (out / "images" / split / f"{stem}.png").write_bytes(img.read_bytes())
            Image.fromarray(lut[np.asarray(Image.open(lab))]).save(out / "labels" / split / f"{stem}.png")
    (out / "classes.yaml").write_text(yaml.safe_dump({"classes": list(COARSE)}))


def test_a_seven_class_domain_trains_beside_nineteen_class_ones(ray_local, e2e_root, tmp_path):
    from raymh.data.cache import synthetic_root

    base = load_config("quickstart", tiny_overrides(e2e_root))
    _coarse_folder_dataset(synthetic_root(base) / "cityscapes", tmp_path / "coarse")
    # two domains (four Ray Data pipelines: labeled and unlabeled each) keep the run short
    domains = f"[{{name: cityscapes, kind: cityscapes, root: cityscapes}}, {{name: coarse, kind: folder, root: {tmp_path / 'coarse'}}}]"
    # the other runs here decode and augment in the worker (the quickstart's way): this one in Ray Data's
    # tasks (the paper preset's `data.transforms_on: ray_data`); tests/test_pipeline.py covers their split
    cfg = load_config("quickstart", tiny_overrides(e2e_root, **{"domains": domains, "train.iters": 4,
                                                                 "train.eval_every": 4,
                                                                 "data.transforms_on": "ray_data"}))  # fmt: skip
    out = fit(cfg)
    assert out.ok, out.error
    state = read_state(out.checkpoint)["model"]
    classifier = [k for k in state if k.startswith("heads.coarse.") and k.endswith(".weight")][-1]
    assert state[classifier].shape[0] == 7
    assert state[classifier.replace("coarse", "cityscapes")].shape[0] == 19
    ious = {k for k in out.metrics if k.startswith("val/iou/coarse/")}
    assert ious <= {f"val/iou/coarse/{c}" for c in COARSE} and "val/miou/coarse" in out.metrics


def test_no_val_image_ever_reaches_a_training_batch(ray_local, e2e_root):
    """The built-in domains, prepared as a run prepares them: two epochs of every train set, decoded as a
    worker decodes them, hold labeled and unlabeled ids only, never a val id (nor a val image's bytes)."""
    import hashlib

    from raymh.data.worker_batches import StepBatches, train_shards
    from raymh.run.driver import domain_sets
    from raymh.train.worker import worker_transforms

    cfg = load_config("quickstart", tiny_overrides(e2e_root))
    data = domain_sets(cfg)
    blocks = {name: rb for dd in data.values() for name, rb in dd.row_blocks().items()}
    steps = StepBatches(list(data), labeled_batch_size=2, unlabeled_batch_size=1, keep_ids=True,
                        transforms=worker_transforms(cfg, rank=0), get_shard=train_shards(blocks, seed=0, rank=0, world_size=1))  # fmt: skip
    seen: dict[str, set] = {d: set() for d in data}
    try:
        for _ in range(2 * max(dd.unlabeled.num_rows for dd in data.values())):
            for d, parts in steps.next_batch().items():
                seen[d] |= set(parts["labeled"]["id"]) | set(parts["unlabeled"]["id"])
    finally:
        steps.close()
    for d, dd in data.items():
        assert seen[d] == set(dd.labeled_ids) | set(dd.unlabeled_ids), d  # every train row, and nothing else
        assert not seen[d] & set(dd.val_ids), d
        train_bytes = {hashlib.sha256(b).digest() for rb in (dd.labeled, dd.unlabeled) for b in rb.take(range(rb.num_rows))["image"]}
        val_bytes = {hashlib.sha256(b).digest() for batch in dd.val.iter_encoded(rank=0, world_size=1) for b in batch["image"]}
        assert val_bytes and not train_bytes & val_bytes, d
