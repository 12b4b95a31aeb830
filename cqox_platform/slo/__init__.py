"""SLOs: the spec model, PromQL builders, budget and burn-rate math, report rendering.

A regular package (not a namespace package) so ``importlib.resources`` finds ``slos.yaml`` in one directory
and import-linter walks its modules.
"""
