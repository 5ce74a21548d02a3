#!/usr/bin/env bash
# Create .venv and install the exact pins of requirements.txt (and requirements-dev.txt with --dev; and
# requirements-gpu.txt on a machine with an NVIDIA GPU).
set -euo pipefail

usage() {
  cat <<'TXT'
Usage: bash setup.bash [--dev]

Creates .venv with python3 and installs pinned torch, transformers, trl, peft, datasets, accelerate,
bitsandbytes, pyyaml and matplotlib. Where `nvidia-smi` sees a GPU, also what the GPU accelerate configs
need (requirements-gpu.txt: deepspeed); elsewhere none of it. Safe to run again: it only installs what
changed.

  --dev   also install the test tools (pytest)

Environment:
  PYTHON           interpreter for the venv (default: python3, 3.10 or newer)
  TORCH_INDEX_URL  where to get torch from, e.g. https://download.pytorch.org/whl/cu128 for a given CUDA.
                   By default: PyPI's CUDA build where `nvidia-smi` sees a GPU, the CPU build elsewhere
                   on Linux.
TXT
}

TORCH_VERSION=2.13.0
requirements=requirements.txt
case "${1:-}" in
  -h|--help) usage; exit 0 ;;
  --dev) requirements=requirements-dev.txt ;;
  "") ;;
  *) echo "setup.bash: unknown option '$1' (see --help)" >&2; exit 2 ;;
esac

cd "$(dirname "$0")"
python=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "setup: creating .venv with $($python --version)"
  "$python" -m venv .venv
fi

gpu_requirements=()
if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
  gpu_requirements=(requirements-gpu.txt)
fi

# Install only when the pins changed since the last successful install: a second run takes a second.
pins=$(cat requirements.txt "$requirements" "${gpu_requirements[@]}" | sha256sum | cut -c1-16)
stamp=".venv/.installed-$pins-torch$TORCH_VERSION"
if [ -f "$stamp" ]; then
  echo "setup: .venv is up to date ($requirements)"
  exit 0
fi

.venv/bin/python -m pip install --quiet --upgrade pip
if [ -n "${TORCH_INDEX_URL:-}" ]; then
  echo "setup: installing torch $TORCH_VERSION from $TORCH_INDEX_URL"
  torch=("torch==$TORCH_VERSION" --index-url "$TORCH_INDEX_URL")
elif [ ${#gpu_requirements[@]} -gt 0 ]; then
  echo "setup: NVIDIA GPU found: installing torch $TORCH_VERSION with CUDA"
  torch=("torch==$TORCH_VERSION")  # PyPI's Linux build is the CUDA one
elif [ "$(uname -s)" = Linux ]; then
  echo "setup: no NVIDIA GPU found: installing the CPU build of torch $TORCH_VERSION"
  torch=("torch==$TORCH_VERSION+cpu")
  # PyTorch's own index only when pip's configured sources (a local wheel cache, say) lack the CPU build: pip would
  # look up every dependency there too, which is slow, and fails where only PyPI is reachable.
  if ! .venv/bin/python -m pip install --dry-run --ignore-installed --no-deps --quiet "${torch[@]}" &>/dev/null; then
    torch+=(--extra-index-url https://download.pytorch.org/whl/cpu)
  fi
else
  echo "setup: installing torch $TORCH_VERSION"
  torch=("torch==$TORCH_VERSION")
fi
.venv/bin/python -m pip install --quiet "${torch[@]}"
echo "setup: installing $requirements"
.venv/bin/python -m pip install --quiet -r "$requirements"
for gpu_file in "${gpu_requirements[@]}"; do
  echo "setup: NVIDIA GPU found: installing $gpu_file"
  .venv/bin/python -m pip install --quiet -r "$gpu_file"
done
rm -f .venv/.installed-*
touch "$stamp"
.venv/bin/python -c "import torch, transformers, trl, peft; print(f'setup: done (torch {torch.__version__}, cuda {torch.cuda.is_available()}, transformers {transformers.__version__}, trl {trl.__version__}, peft {peft.__version__})')"
