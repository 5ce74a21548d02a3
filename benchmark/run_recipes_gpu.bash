#!/usr/bin/env bash
# The command that fills the GPU tables of benchmark/README.md (The shipped recipes on one GPU): the recipes suite at
# the recipes' own sizes on this machine's GPU, about 8 min on one H100 or H200 by the estimate in
# benchmark/recipes.py (not measured yet). Run `bash setup.bash` first. Extra flags go to the suite: --quick first
# where less than 10 min of GPU time is left. It writes benchmark/reports/recipes_gpu.{json,md}.
set -euo pipefail
cd "$(dirname "$0")/.."
echo "run_recipes_gpu: python -m benchmark recipes --scale full --name recipes_gpu $*"
.venv/bin/python -m benchmark recipes --scale full --name recipes_gpu "$@"
