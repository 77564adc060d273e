"""`raymh report --run A --run B`: grids of the same table (other fractions, other seeds) read back as one
table from MLflow records written here the way `raymh reproduce` writes them; grids that differ are refused."""

from __future__ import annotations

import numpy as np
import pytest
import yaml
from click.testing import CliRunner

from raymh.errors import InputError
from raymh.evidence import render
from raymh.evidence.report import load_evidence
from raymh.evidence.tables import RunRecord, Trial, table_spec, table_values

DOMAINS = ["cityscapes", "bdd100k"]
BASE = {"name": "evidence", "domains": [{"name": d, "kind": d, "root": f"/data/{d}"} for d in DOMAINS],
        "train": {"iters": 600, "seed": 0}, "loss": {"dc_weight": 0.1}}  # fmt: skip
VERSION, COMMIT = "0.9.0", "a" * 40


def _digest(trial: Trial) -> str:
    """What `raymh.labeled_digest` looks like: equal for the runs of one seed (and fraction), not across seeds."""
    return f"{trial.seed:04x}{trial.fraction.replace('/', ''):0>4}"


def _miou(trial: Trial, domain: str) -> float:
    """A distinct, seed-dependent value per trial and domain, so a mixed-up record would show."""
    base = {"supervised": 0.30, "semi": 0.33}[trial.setting] + (0.1 if trial.fraction == "full" else 0.0)
    return base + 0.01 * DOMAINS.index(domain) + 0.004 * trial.seed + (0.02 if trial.fraction == "1/4" else 0.0)


@pytest.fixture
def store(tmp_path):
    from mlflow.tracking import MlflowClient

    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    client = MlflowClient(uri)
    exp = client.create_experiment("raymh-test", artifact_location=str(tmp_path / "artifacts"))

    def grid(fractions: str, full: bool, seeds: list[int], *, config: str = "evidence", base=None,
             tags=lambda trial: {}, repeat=()) -> str:  # fmt: skip
        """A `raymh reproduce` parent and its finished children; `tags(trial)` overrides a child's tags (None
        removes one); `repeat` names trials that get a second finished run (a retried trial)."""
        parent = client.create_run(exp, run_name=f"reproduce-{fractions}")
        pid = parent.info.run_id
        for k, v in {"table": "semi-vs-supervised", "domains": ",".join(DOMAINS), "fractions": fractions,
                     "full": str(full), "seeds": ",".join(map(str, seeds)), "config": config,
                     "render_seed": "None", "overrides": ""}.items():  # fmt: skip
            client.log_param(pid, k, v)
        cfg = tmp_path / pid / "base_config.yaml"
        cfg.parent.mkdir()
        cfg.write_text(yaml.safe_dump(base or BASE))
        client.log_artifact(pid, str(cfg), "config")
        spec = table_spec("semi-vs-supervised", domains=DOMAINS, fractions=fractions.split(","), full=full)
        for trial in [*spec.trials(seeds), *repeat]:
            child_tags = {"mlflow.parentRunId": pid, **trial.tags(), "raymh.version": VERSION,
                          "mlflow.source.git.commit": COMMIT, "raymh.labeled_digest": _digest(trial), **tags(trial)}  # fmt: skip
            child_tags = {k: v for k, v in child_tags.items() if v is not None}
            child = client.create_run(exp, tags=child_tags, run_name=trial.slug)
            for d in DOMAINS:
                client.log_metric(child.info.run_id, f"val/miou/{d}", _miou(trial, d), step=600)
            client.set_terminated(child.info.run_id)
        client.set_terminated(pid)
        return pid

    return uri, grid


def test_grids_of_other_fractions_combine_into_one_table(store):
    uri, grid = store
    eighth = grid("1/8", False, [3, 4, 5])
    quarter = grid("1/4", True, [3, 4, 5])
    ev = load_evidence(uri, [quarter, eighth])  # order of the runs does not matter: rows go by fraction
    assert [(r.setting, r.fraction) for r in ev.spec.rows] == [
        ("supervised", "1/8"), ("semi", "1/8"), ("supervised", "1/4"), ("semi", "1/4"), ("supervised", "full")]
    assert ev.parent_run_ids == [quarter, eighth] and ev.values.seeds == [3, 4, 5]
    spec = table_spec("semi-vs-supervised", domains=DOMAINS, fractions=["1/8", "1/4"], full=True)
    expected = table_values(spec, [RunRecord(t, {d: _miou(t, d) for d in DOMAINS}) for t in spec.trials([3, 4, 5])])
    for row in spec.rows:
        for col in [*DOMAINS, "average"]:
            got, want = ev.values.cells[(row, col)], expected.cells[(row, col)]
            assert (got.n, got.mean) == (3, pytest.approx(want.mean)), (row, col)
    for i, frac in enumerate(("1/8", "1/4")):  # semi - supervised, paired by seed: 0.03 on every seed
        d = ev.values.diffs[(i, "average")]
        assert d.mean == pytest.approx(0.03) and d.low == pytest.approx(0.03) and d.high == pytest.approx(0.03), frac
    full = ev.values.cells[(spec.rows[-1], "cityscapes")]
    assert full.mean == pytest.approx(np.mean([0.40 + 0.004 * s for s in (3, 4, 5)]))


def test_grids_of_other_seeds_pool_their_seeds(store):
    uri, grid = store
    a, b = grid("1/8", False, [0, 1]), grid("1/8", False, [2, 3])
    ev = load_evidence(uri, [a, b])
    assert ev.values.seeds == [0, 1, 2, 3]
    assert ev.values.diffs[(0, "average")].n == 4


def test_report_cli_prints_the_combined_table(store, tmp_path, monkeypatch):
    from raymh.cli import main

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    uri, grid = store
    a, b = grid("1/8", False, [0, 1]), grid("1/4", True, [0, 1])
    out = tmp_path / "report"
    result = CliRunner().invoke(main, ["report", "--run", a, "--run", b, "--tracking-uri", uri, "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "one table from 2 grids" in result.output
    assert "Downloading artifacts" not in result.output + result.stderr  # no MLflow progress bars
    table = (out / "table.md").read_text()
    assert "| supervised | 1/8 |" in table and "| semi (DCLoss) | 1/4 |" in table and "| supervised | full |" in table


def test_the_same_cell_and_seed_in_two_grids_is_refused(store):
    uri, grid = store
    a, b = grid("1/8", False, [0, 1]), grid("1/8,1/4", False, [1, 2])
    with pytest.raises(InputError, match=r"semi@1/8 seed 1 ran in both parent runs|supervised@1/8 seed 1 ran in both"):
        load_evidence(uri, [a, b])


def test_grids_of_other_configs_are_refused(store):
    uri, grid = store
    a = grid("1/8", False, [0])
    b = grid("1/4", False, [0], config="quickstart")
    steps = grid("1/4", False, [0], base={**BASE, "train": {"iters": 300, "seed": 0}})
    with pytest.raises(InputError, match=r"differ in config \('evidence' vs 'quickstart'\)"):
        load_evidence(uri, [a, b])
    with pytest.raises(InputError, match=r"different base configs .*train\.iters: 600 vs 300"):
        load_evidence(uri, [a, steps])
    other_seed = grid("1/4", False, [1], base={**BASE, "train": {"iters": 600, "seed": 7}, "data": {"split_seed": 7}})
    assert len(load_evidence(uri, [a, other_seed]).spec.rows) == 4  # seeds are set per trial: not compared


def test_a_key_only_one_grid_has_is_compared_against_its_default(store):
    """A setting written by one grid's base config and absent from the other's is compared with the default the
    other one trained with; one this raymh version does not know differs from everything."""
    from raymh.config import OptimConfig

    uri, grid = store
    default_lr = OptimConfig().lr
    a = grid("1/8", False, [0])  # no optim section: lr at its default
    same = grid("1/4", False, [0], base={**BASE, "optim": {"lr": default_lr}})
    other = grid("1/4", False, [1], base={**BASE, "optim": {"lr": 0.05}})
    newer = grid("1/4", False, [2], base={**BASE, "future_knob": 3})
    assert len(load_evidence(uri, [a, same]).spec.rows) == 4
    with pytest.raises(InputError, match=rf"optim\.lr: {default_lr!r} \(default\) vs 0\.05"):
        load_evidence(uri, [a, other])
    with pytest.raises(InputError, match=r"future_knob: <not in this raymh version> vs 3.*--allow-mixed"):
        load_evidence(uri, [a, newer])
    ev = load_evidence(uri, [a, other], allow_mixed=True)
    text = render.format_text(ev.values)
    assert "pools mixed code versions or configs" in text.splitlines()[0]
    assert "mixed: runs" in text and "optim.lr: 0.01 (default) vs 0.05" in text
