"""`raymh reproduce` scores the evidence preset on renders it was not tuned on (data.synthetic.tuned_on)."""

from __future__ import annotations

from raymh.config import load_config
from raymh.evidence.reproduce import pick_render_seed


def test_the_evidence_preset_is_scored_on_a_held_out_render_seed_by_default():
    cfg = load_config("evidence")
    assert cfg.data.synthetic.tuned_on == [0] and cfg.data.synthetic.seed == 0
    seed, note = pick_render_seed(cfg, None)
    assert seed == 1 and "held out" in note and "[0]" in note
    assert pick_render_seed(cfg, 0) == (0, "; render seed 0 (NOT held out: the config was tuned on it)")
    assert pick_render_seed(cfg, 5)[0] == 5
    two = load_config("evidence", ["data.synthetic.tuned_on=[0, 1]"])
    assert pick_render_seed(two, None)[0] == 2


def test_a_config_without_tuning_seeds_keeps_its_own_render_seed():
    cfg = load_config("quickstart", ["data.synthetic.seed=3"])
    assert pick_render_seed(cfg, None)[0] == 3
    assert pick_render_seed(load_config("quickstart", ["data.synthetic=null"]), None) == (None, "")
