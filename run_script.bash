#!/usr/bin/env bash
# Run the experiment: the default demo (no arguments), or one script with a config of your choice.
set -euo pipefail

usage() {
  cat <<'TXT'
Usage:
  bash run_script.bash
      The default experiment: builds the demo base model and data if missing (models/demo-base, data/demo),
      trains DPO, KTO and SimPO from training_configs/{dpo,kto,simpo}_v1.yaml and the SimPO ablation from
      training_configs/simpo_trl_defaults.yaml, merges each into models/, evaluates them on the held-out pairs,
      and writes the figures to images/, the results to results/*.json and their tables to docs/results.md. Re-running replaces the experiment's own
      earlier outputs.

  bash run_script.bash sweep [FLAGS...]
      The reward-KL frontier: python -m experiment.sweep (each algorithm over a small grid of beta, and SimPO's
      gamma, at training seeds 42, 1 and 2: 27 trainings), then the figures and tables. FLAGS go to
      experiment.sweep, e.g. --algorithms dpo, or --seeds 42 for one seed (9 trainings).

  bash run_script.bash SCRIPT [CONFIG] [ACCELERATE_CONFIG] [-- FLAGS...]
      One run: SCRIPT is dpo, kto or simpo; CONFIG defaults to training_configs/SCRIPT_v1.yaml;
      ACCELERATE_CONFIG to $ACCELERATE_CONFIG, else accelerate_configs/single_gpu.yaml on a GPU machine and
      accelerate_configs/cpu.yaml elsewhere. FLAGS override the config, e.g. -- --learning_rate 1e-4.
      A CONFIG that trains on the demo model or data (models/demo-base, data/demo) builds them first if missing.
      Example: bash run_script.bash kto training_configs/kto_v1.yaml accelerate_configs/multi_gpu.yaml

SIGTERM or SIGINT (Ctrl-C) is passed to every process the script started; a training run then finishes its step,
saves a checkpoint and says how to resume, and the script exits with 128 + the signal's number once all have ended.

Run `bash setup.bash` first.
TXT
}

cd "$(dirname "$0")"
if [ "${1:-}" = -h ] || [ "${1:-}" = --help ]; then usage; exit 0; fi
if [ ! -x .venv/bin/accelerate ]; then
  echo "run_script: .venv is missing or incomplete; run 'bash setup.bash' first" >&2
  exit 1
fi
export PATH="$PWD/.venv/bin:$PATH" TOKENIZERS_PARALLELISM=false

if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu=yes default_accelerate_config=accelerate_configs/single_gpu.yaml
else
  gpu="" default_accelerate_config=accelerate_configs/cpu.yaml
fi
accelerate_config=${ACCELERATE_CONFIG:-$default_accelerate_config}

# Each command runs in a process group of its own, which a SIGTERM or SIGINT to this script is passed to: accelerate's
# single-process launcher passes no signal on, so a signal used to stop bash alone while training ran on, orphaned,
# holding its lock. (torch's multi-process launcher, in that group, passes SIGTERM on to its workers, which run in
# sessions of their own, and kills them TORCH_ELASTIC_SHUTDOWN_TIMEOUT seconds later, 30 by default.)
group=""
stop() {  # stop SIGNAL NUMBER: pass the signal on, wait until every process of the group has ended, exit
  trap '' TERM INT  # one signal is passed on; a second would make torch's launcher leave its workers behind
  echo "run_script: SIG$1: passing it to the running command's processes and waiting for them to end" >&2
  if [ -n "$group" ]; then
    kill -s "$1" -- "-$group" 2>/dev/null || true
    wait "$group" 2>/dev/null || true
    while kill -0 -- "-$group" 2>/dev/null; do sleep 1; done  # what the command started and left running
  fi
  exit $((128 + $2))
}
trap 'stop TERM 15' TERM
trap 'stop INT 2' INT

run() {  # run COMMAND...: print it, run it in a process group of its own and wait for it
  echo "run_script: $*"
  set -m  # job control: the background job below gets a process group of its own
  "$@" &
  group=$!
  set +m
  wait "$group"
}

train() {  # train SCRIPT CONFIG ACCELERATE_CONFIG [FLAGS...]
  local script=$1 config=$2 launch_config=$3
  shift 3
  run accelerate launch --config_file "$launch_config" "$script.py" --config "$config" "$@"
}

if [ "${1:-}" = sweep ]; then
  shift
  start=$SECONDS
  run python -m experiment.demo
  run python -m experiment.sweep "$@"
  run python -m experiment.results
  echo "run_script: sweep done in $((SECONDS - start))s; results in results/, figures in images/"
  exit 0
fi

if [ $# -gt 0 ]; then
  script=$1
  case "$script" in dpo|kto|simpo) ;; *) echo "run_script: unknown script '$script' (dpo, kto or simpo)" >&2; exit 2 ;; esac
  shift
  config=training_configs/${script}_v1.yaml
  if [ $# -gt 0 ] && [ "$1" != -- ]; then config=$1; shift; fi
  if [ $# -gt 0 ] && [ "$1" != -- ]; then accelerate_config=$1; shift; fi
  if [ $# -gt 0 ] && [ "$1" = -- ]; then shift; fi
  # Without GPUs accelerate's launcher refuses these with a traceback (DeepSpeed is not installed there), or every
  # process with a line of its own (FSDP): one line here instead.
  if [ -z "$gpu" ] && [ -f "$accelerate_config" ] && grep -Eq '^distributed_type:[[:space:]]*"?(DEEPSPEED|FSDP)' "$accelerate_config"; then
    echo "run_script: $accelerate_config shards the model over GPUs (DeepSpeed or FSDP), and this machine has none;" \
      "use accelerate_configs/cpu.yaml, or accelerate_configs/multi_gpu.yaml with --use_cpu true for several processes" >&2
    exit 2
  fi
  demo_assets='^(model_name_or_path|dataset_name):[[:space:]]*(models/demo-base|data/demo)/?([[:space:]]|$)'
  if [ -f "$config" ] && grep -Eq "$demo_assets" "$config"; then
    echo "run_script: $config trains on the demo assets; building what is missing of them"
    run python -m experiment.demo
  fi
  train "$script" "$config" "$accelerate_config" "$@"
  exit 0
fi

start=$SECONDS
echo "run_script: default experiment on $accelerate_config"
run python -m experiment.demo
for script in dpo kto simpo; do
  train "$script" "training_configs/${script}_v1.yaml" "$accelerate_config" --overwrite_merged true
done
echo "run_script: the SimPO ablation, with TRL's default beta and gamma"
train simpo training_configs/simpo_trl_defaults.yaml "$accelerate_config" --overwrite_merged true

echo "run_script: evaluating the merged models on the held-out pairs"
run python -m experiment.evaluate models/dpo_v1 models/kto_v1 models/simpo_v1 models/simpo_trl_defaults \
  --reward_fn experiment.gold_reward:gold_reward --fluency_fn experiment.review_grammar:is_review --samples_per_prompt 16
run python -m experiment.figures
run python -m experiment.ablation
run python -m experiment.results
echo "run_script: default experiment done in $((SECONDS - start))s; merged models in models/, figures in images/," \
  "tables in docs/results.md and the headline in README.md"
