"""Ray Tune sweeps: search-space files (`raymh.tune.space`) and the sweep runner (`raymh.tune.sweep`, which
imports Ray when used)."""
