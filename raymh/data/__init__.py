"""Data: dataset adapters (`adapters`), `raymh data prepare` (`prepare`), label ratios (`splits`), the CLI (`cli`).

Nothing is imported here, so that `import raymh.data.labels` stays light; import the submodules.
"""
