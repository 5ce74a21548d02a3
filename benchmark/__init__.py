"""The benchmark: our scripts against TRL's own, speed settings, scaling, and the memory of the merge.

`python -m benchmark` runs a suite and writes its report to `benchmark/reports/`. It runs the training scripts and
imports the training core (`prefopt`), never the experiment.
"""
