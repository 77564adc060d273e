"""Checkpoints: save and load are mirror images, and every checkpoint records the raymh version."""

from __future__ import annotations

import torch
from click.testing import CliRunner

import raymh
from raymh.cli import main
from raymh.train.checkpoint import load_state, read_state, save_state


def test_a_checkpoint_records_the_raymh_version_and_restores_the_state(tmp_path):
    model = torch.nn.Linear(3, 2)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1)
    save_state(tmp_path, model=model, optimizer=opt, scheduler=sched, step=7, best_score=0.25,
               config_yaml="name: x\n", mlflow_run_id="abc")  # fmt: skip
    assert read_state(tmp_path)["raymh_version"] == raymh.__version__
    other = torch.nn.Linear(3, 2)
    restored = load_state(tmp_path, model=other)
    assert restored == {"step": 7, "best_score": 0.25, "mlflow_run_id": "abc", "raymh_version": raymh.__version__}
    assert torch.equal(other.weight, model.weight)


def test_version_option_prints_the_package_version():
    out = CliRunner().invoke(main, ["--version"])
    assert out.exit_code == 0 and raymh.__version__ in out.output
