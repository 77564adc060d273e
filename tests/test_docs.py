"""The project documents itself: docs/config.md is the `raymh config docs` output, every relative link in
README.md and docs/ resolves inside the repository, and nothing points outside it."""

from __future__ import annotations

import re
from pathlib import Path

from click.testing import CliRunner

from raymh.cli import main
from raymh.config import ExperimentConfig, flatten, load_config

ROOT = Path(__file__).resolve().parents[1]
PAGES = [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")


def test_config_md_is_the_config_docs_output():
    out = CliRunner().invoke(main, ["config", "docs"])
    assert out.exit_code == 0, out.output
    committed = (ROOT / "docs" / "config.md").read_text()
    assert out.output == committed, "docs/config.md is stale: run `raymh config docs > docs/config.md`"


def test_config_reference_names_every_key_with_its_description():
    from raymh.config_docs import config_reference

    text = config_reference()
    keys = {re.sub(r"^domains\.\d+\.", "domains[i].", k) for k in flatten(load_config("paper"))}
    keys = {k for k in keys if not k.startswith("data.synthetic.")} | {
        f"data.synthetic.{k}" for k in ("images", "val_images", "size", "seed")
    }
    for key in keys:
        assert f"| `{key}` |" in text, key
    desc = ExperimentConfig.model_fields["loss"].annotation.model_fields["gamma"].description
    assert desc in text


def test_every_relative_link_in_readme_and_docs_resolves():
    checked = 0
    for page in PAGES:
        for target in LINK.findall(page.read_text()):
            if re.match(r"[a-z]+://|mailto:|#", target):
                continue
            path = (page.parent / target.split("#", 1)[0]).resolve()
            assert path.exists(), f"{page.relative_to(ROOT)}: link {target!r} does not resolve"
            assert ROOT in path.parents, f"{page.relative_to(ROOT)}: link {target!r} leaves the repository"
            checked += 1
    assert checked >= 10  # the front page and the docs do link to each other


def test_nothing_points_outside_the_repository():
    files = [*PAGES, *sorted((ROOT / "raymh").rglob("*.py")), *sorted((ROOT / "raymh").rglob("*.yaml"))]
    for f in files:
        assert "shared/" not in f.read_text(), f"{f.relative_to(ROOT)} mentions a path outside the repository"


def test_the_evidence_presets_split_sizes_in_the_docs_are_the_codes():
    """docs/evidence.md's table of train / val / labeled counts per domain of the `evidence` preset, from the
    render counts, each adapter's split rule and the labeled-subset rule."""
    from raymh.data.adapters.synscapes import SynscapesAdapter
    from raymh.data.splits import labeled_ids

    synth = load_config("evidence").data.synthetic
    total = synth.images + synth.val_images  # Synscapes-like: one numbered folder, split by the adapter
    val = {"cityscapes": synth.val_images, "bdd100k": synth.val_images, "synscapes": SynscapesAdapter().val_count(total)}
    train = {"cityscapes": synth.images, "bdd100k": synth.images, "synscapes": total - val["synscapes"]}
    text = (ROOT / "docs" / "evidence.md").read_text()
    for d in train:
        ids = [str(i) for i in range(train[d])]
        row = [train[d], val[d], *(len(labeled_ids(ids, fraction=f, seed=0)) for f in (1 / 8, 1 / 4))]
        assert f"| {d} | {' | '.join(map(str, row))} |" in text, (d, row)
