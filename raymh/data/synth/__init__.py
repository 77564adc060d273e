"""Procedural multi-domain street scenes with the 19 Cityscapes classes (`raymh data synth`, docs/data.md).

`render_dataset` writes a Cityscapes-like, a BDD100K-like and a Synscapes-like domain, each in its real
dataset's layout and label encoding, so the default run goes through the same adapters as real data.
"""

from raymh.data.synth.render import DOMAINS, render_dataset, render_sample

__all__ = ["DOMAINS", "render_dataset", "render_sample"]
