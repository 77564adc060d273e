"""`raymh report --run A --run B`: grids of the same table (other fractions, other seeds) read back as one
table from MLflow records written here the way `raymh reproduce` writes them; grids that differ are refused."""

from __future__ import annotations

import csv
import io

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
    assert f"runs by row: supervised@1/8, semi@1/8: raymh.version {VERSION}, commit aaaaaaaaaaaa, config of grid {a[:8]}; " in text
    assert "each row's runs agree among themselves" in text  # no row pools both grids: none is marked *
    assert "*" not in text


def _children(uri: str, parent: str) -> dict[tuple[str, str, int], list[str]]:
    """{(setting, fraction, seed): [run ids]} of a parent's children."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(uri)
    run = client.get_run(parent)
    out: dict[tuple[str, str, int], list[str]] = {}
    for c in client.search_runs([run.info.experiment_id], f"tags.mlflow.parentRunId = '{parent}'"):
        t = c.data.tags
        out.setdefault((t["raymh.setting"], t["raymh.fraction"], int(t["raymh.seed"])), []).append(c.info.run_id)
    return out


def test_runs_of_other_code_are_refused_unless_allowed_and_then_marked(store):
    uri, grid = store
    a = grid("1/8", False, [0, 1])
    b = grid("1/8", False, [2], tags=lambda t: {"raymh.version": "0.9.1"})
    with pytest.raises(InputError, match=r"raymh\.version '0\.9\.0' \(runs [0-9a-f]{32}.* vs '0\.9\.1' \(runs") as e:
        load_evidence(uri, [a, b])
    for run_id in _children(uri, b).values():
        assert run_id[0] in str(e.value)
    ev = load_evidence(uri, [a, b], allow_mixed=True)
    assert ev.values.diffs[(0, "average")].n == 3  # nothing left out
    lines = render.format_text(ev.values).splitlines()
    assert "pools mixed code versions or configs" in lines[0]
    assert [line.strip().split("  ")[0] for line in lines[3:6]] == ["supervised*", "semi (DCLoss)*", "semi - supervised*"]
    assert any(line.startswith("mixed: raymh.version '0.9.0'") for line in lines)
    rows = list(csv.DictReader(io.StringIO(render.format_csv(ev.values))))
    assert {r["marks"] for r in rows} == {"*"} and {r["seeds"] for r in rows} == {"0 1 2"}


def test_a_run_without_the_commit_tag_counts_as_unknown(store):
    uri, grid = store
    no_tags = grid("1/8", False, [0, 1], tags=lambda t: {"raymh.version": None, "mlflow.source.git.commit": None})
    assert load_evidence(uri, no_tags).values.diffs[(0, "average")].n == 2  # two unknowns agree
    one = grid("1/8", False, [0, 1], tags=lambda t: {"mlflow.source.git.commit": None} if t.seed == 1 else {})
    with pytest.raises(InputError, match=r"mlflow\.source\.git\.commit 'a{40}' \(runs .*\) vs 'unknown' \(runs"):
        load_evidence(uri, one)  # within one parent too


def test_two_finished_runs_of_one_cell_and_seed_in_one_grid_are_refused(store):
    uri, grid = store
    pid = grid("1/8", False, [0, 1], repeat=[Trial("semi", "1/8", 1)])  # a retried trial that also finished
    first, second = _children(uri, pid)[("semi", "1/8", 1)]
    with pytest.raises(InputError, match=r"semi@1/8 seed 1 ran in parent run \w+ \(a retried or repeated trial\)") as e:
        load_evidence(uri, pid)
    assert first in str(e.value) and second in str(e.value)
    with pytest.raises(InputError, match="two finished runs"):  # the table itself never keeps one of two silently
        table_values(
            table_spec("semi-vs-supervised", domains=DOMAINS, fractions=["1/8"], full=False),
            [RunRecord(Trial("semi", "1/8", 1), {"cityscapes": 0.3}, run_id=r) for r in ("r1", "r2")],
        )


def test_a_pair_without_equal_labeled_digests_is_refused_naming_cell_seed_and_runs(store):
    uri, grid = store
    broken = grid("1/8,1/4", False, [0, 1], tags=lambda t: {"raymh.labeled_digest": "ffff"} if (t.setting, t.seed) == ("semi", 1) and t.fraction == "1/4" else {})
    runs = _children(uri, broken)
    semi, sup = runs[("semi", "1/4", 1)][0], runs[("supervised", "1/4", 1)][0]
    with pytest.raises(InputError, match=r"semi@1/4 vs supervised@1/4 seed 1 \(different digests\)") as e:
        load_evidence(uri, broken)
    assert f"runs {semi} (raymh.labeled_digest ffff) and {sup}" in str(e.value)
    assert "1/8" not in str(e.value)


def test_runs_without_digests_need_allow_unpaired_and_are_then_marked(store):
    uri, grid = store
    old = grid("1/8,1/4", True, [0, 1], tags=lambda t: {"raymh.labeled_digest": None})  # before raymh recorded them
    with pytest.raises(InputError, match=r"4 pair\(s\) of runs.*no digest.*Runs made before raymh recorded digests have none: pass --allow-unpaired"):  # fmt: skip
        load_evidence(uri, old)
    ev = load_evidence(uri, old, allow_unpaired=True)
    assert ev.values.diffs[(0, "average")].n == 2 and ev.values.diffs[(1, "average")].n == 2  # nothing left out
    text = render.format_text(ev.values)
    rows = [line for line in text.splitlines() if line.startswith("  semi - supervised")]
    assert len(rows) == 2 and all(r.startswith("  semi - supervised†") for r in rows)
    assert sum(line.startswith("unpaired: semi@") for line in text.splitlines()) == 4
    assert "| semi - supervised† |" in render.format_markdown(ev.values)


def test_multi_vs_single_pairs_are_checked_on_each_domains_digest():
    """A single-domain run reads one domain's labeled batches, the multi-domain run all of them: each pair is
    checked on that domain's digest (raymh.labeled_digest.<domain>), which a domain's own streams make equal."""
    from raymh.evidence.pooling import digest_issues

    spec = table_spec("multi-vs-single", domains=DOMAINS, fractions=["1/8"])

    def tags(t):
        per = {f"raymh.labeled_digest.{d}": f"{d}-s{t.seed}" for d in ([t.domain] if t.domain else DOMAINS)}
        return {"raymh.labeled_digest": t.slug, **per}  # whole digests differ by design

    records = [RunRecord(t, {}, run_id=t.slug, tags=tags(t)) for t in spec.trials([0, 1])]
    assert digest_issues(spec, records) == {}
    broken = [RunRecord(r.trial, {}, run_id=r.run_id, tags={**r.tags, "raymh.labeled_digest.bdd100k": "other"})
              if r.trial.domain == "bdd100k" and r.trial.seed == 1 else r for r in records]  # fmt: skip
    (issue,) = digest_issues(spec, broken)[0]
    assert "multi@1/8 vs single@1/8:bdd100k seed 1 (different digests)" in issue and "single-1_8-bdd100k-s1" in issue


def test_cells_of_other_seeds_say_their_n(store):
    uri, grid = store
    ev = load_evidence(uri, [grid("1/8", False, [0, 1]), grid("1/4", True, [2])])
    text = render.format_text(ev.values)
    lines = text.splitlines()
    assert "each cell's own seeds" in lines[0] and "over 3 seeds" not in lines[0]
    sup8 = next(line for line in lines if line.startswith("supervised") and " 1/8 " in line)
    full = next(line for line in lines if " full " in line)
    assert sup8.count("(n=2)") == 3 and full.count("(n=1)") == 3
    assert "seeds per row: supervised@1/8 [0, 1]; semi@1/8 [0, 1]; supervised@1/4 [2]" in text
    same = render.format_text(load_evidence(uri, grid("1/8", False, [0, 1])).values)
    assert "(n=" not in same and "mean ± std over 2 seeds [0, 1]" in same


def test_report_cli_options_allow_mixed_and_unpaired(store, tmp_path, monkeypatch):
    from raymh.cli import main

    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    uri, grid = store
    a = grid("1/8", False, [0, 1], tags=lambda t: {"raymh.labeled_digest": None})
    b = grid("1/8", False, [2], tags=lambda t: {"raymh.version": "0.9.1"})
    args = ["report", "--run", a, "--run", b, "--tracking-uri", uri, "--out", str(tmp_path / "r")]
    refused = CliRunner().invoke(main, args)
    assert refused.exit_code == 1 and "raymh.version" in refused.output and "Traceback" not in refused.output
    unpaired = CliRunner().invoke(main, [*args, "--allow-mixed"])
    assert unpaired.exit_code == 1 and "--allow-unpaired" in unpaired.output
    ok = CliRunner().invoke(main, [*args, "--allow-mixed", "--allow-unpaired"])
    assert ok.exit_code == 0, ok.output
    assert "semi - supervised*†" in ok.output
    md = (tmp_path / "r" / "table.md").read_text()
    assert "| semi - supervised\\*† |" in md and "Holm-adjusted over the 1 fraction x 3 columns = 3 paired comparisons" in md
