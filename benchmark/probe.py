"""Run a training script unchanged, with a Trainer reporter that records what `python -m benchmark` compares.

    python -m benchmark.probe probe.json dpo.py --config training_configs/dpo_v1.yaml --report_to prefopt_probe
    python -m benchmark.probe probe.json .venv/.../trl/scripts/kto.py --config kto.yaml --report_to prefopt_probe
    python -m benchmark.probe probe.json benchmark.trl_baseline:trl_simpo --config simpo.yaml --report_to prefopt_probe

The target is a script (run as `__main__`, as `python script.py` would) or `module:function` (called with the
arguments). The reporter joins the Trainer as its reporting integrations (wandb, trackio, ...) do, through
`--report_to prefopt_probe`, so our scripts and TRL's are measured by the same code and neither is edited. When
training ends it writes one JSON object: the wall and CPU time at the end of each optimizer step; the tokens the
policy was trained on (its forward passes with gradients; reference and KL passes run without and are not
counted); the loss and gradient norm the Trainer logged at each step (with `--logging_steps 1`); the batch the
Trainer ran (micro-batch, accumulation steps, processes); the process's peak resident memory; on an accelerator,
its peak allocated memory.
"""

import argparse
import json
import resource
import runpy
import sys
import time
from importlib import import_module
from pathlib import Path

import torch
from transformers import TrainerCallback
from transformers.integrations import integration_utils

REPORTER = "prefopt_probe"

_STARTED = time.perf_counter()  # times in the report are seconds since the probe started


class ProbeCallback(TrainerCallback):
    """Step times, trained tokens and peak memory of one training run, written to `path` when it ends."""

    def __init__(self, path: str | Path):
        self.path = Path(path)
        self.init_end_s = None
        self.train_begin_s = None
        self.train_begin_unix_s = None
        self.step_end_s = []
        self.step_end_cpu_s = []
        self.logs = {}
        self.losses = []
        self.grad_norms = []
        self._model = None
        self._hook = None
        self._tokens = None

    def on_init_end(self, args, state, control, **kwargs):
        self.init_end_s = _elapsed()  # DPO's and KTO's precomputed reference log-probs come after this, before training

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        self.train_begin_s = _elapsed()
        self.train_begin_unix_s = time.time()  # the clock a parent process shares, to split its wall time
        self._model = model
        # A hook on the outermost model sees every batch whichever way the trainer builds it; DDP calls it too.
        self._hook = model.register_forward_pre_hook(self._count_tokens, with_kwargs=True)

    def _count_tokens(self, module, args, kwargs):
        if not (module.training and torch.is_grad_enabled()):
            return
        mask, input_ids = kwargs.get("attention_mask"), kwargs.get("input_ids", args[0] if args else None)
        # Summed on the device, read once at the end: an item() per forward would sync the GPU every step.
        count = mask.sum() if mask is not None else input_ids.new_tensor(input_ids.numel())
        self._tokens = count if self._tokens is None else self._tokens + count

    def on_step_end(self, args, state, control, **kwargs):
        self.step_end_s.append(_elapsed())
        # CPU time of this process's threads: on a shared machine, wall time also counts the waits for a free core.
        self.step_end_cpu_s.append(time.process_time())

    def on_log(self, args, state, control, logs=None, **kwargs):
        logs = logs or {}
        self.logs.update(logs)
        if "loss" in logs:
            self.losses.append(logs["loss"])
            self.grad_norms.append(logs.get("grad_norm"))

    def on_train_end(self, args, state, control, **kwargs):
        train_end_s, train_end_unix_s = _elapsed(), time.time()
        self._hook.remove()
        if not state.is_world_process_zero:
            return
        accelerator = torch.accelerator.current_accelerator() if torch.accelerator.is_available() else None
        report = {
            "init_end_s": self.init_end_s,
            "train_begin_s": self.train_begin_s,
            "train_end_s": train_end_s,
            "train_begin_unix_s": self.train_begin_unix_s,
            "train_end_unix_s": train_end_unix_s,
            "step_end_s": self.step_end_s,
            "step_end_cpu_s": self.step_end_cpu_s,
            "train_runtime_s": self.logs.get("train_runtime"),
            "train_tokens": int(self._tokens) if self._tokens is not None else 0,
            "max_steps": state.max_steps,
            "losses": self.losses,
            "grad_norms": self.grad_norms,
            "micro_batch": args.per_device_train_batch_size,
            "accumulation_steps": args.gradient_accumulation_steps,
            "processes": args.world_size,
            "peak_rss_bytes": _peak_rss_bytes(),
            "accelerator": str(accelerator) if accelerator else None,
            "accelerator_name": torch.cuda.get_device_name() if torch.cuda.is_available() else None,
            "peak_accelerator_bytes": torch.accelerator.max_memory_allocated() if accelerator else None,
            "matmul_parameters": _matmul_parameters(self._model),
            "compute_dtype": _compute_dtype(args, self._model),
            "torch_threads": torch.get_num_threads(),
        }
        self.path.write_text(json.dumps(report, indent=1) + "\n")


def _elapsed() -> float:
    return time.perf_counter() - _STARTED


def _peak_rss_bytes() -> int:
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak if sys.platform == "darwin" else peak * 1024  # KiB on Linux


def _matmul_parameters(model: torch.nn.Module) -> int:
    """Weights of the base model's linear layers, the lm_head included: each costs 2 FLOPs per token forward.

    Embedding lookups cost nothing and LoRA's low-rank factors are negligible, so neither is counted. Counted from the
    layers' shapes: a 4-bit layer's weight packs two parameters per element.
    """
    return sum(
        module.in_features * module.out_features
        for name, module in model.named_modules()
        if isinstance(module, torch.nn.Linear) and "lora_" not in name
    )


def _compute_dtype(args, model: torch.nn.Module) -> str:
    if args.bf16 or next(model.parameters()).dtype == torch.bfloat16:
        return "bfloat16"
    if args.fp16 or next(model.parameters()).dtype == torch.float16:
        return "float16"
    return "tf32" if args.tf32 or torch.get_float32_matmul_precision() != "highest" else "float32"


def run_target(target: str, arguments: list[str]) -> None:
    """`path.py` runs as `python path.py arguments`; `module:function` is called with `arguments`."""
    if target.endswith(".py"):
        sys.argv = [target, *arguments]
        runpy.run_path(target, run_name="__main__")
    else:
        module, _, function = target.partition(":")
        getattr(import_module(module), function)(arguments)


def main() -> None:
    parser = argparse.ArgumentParser(
        prog="python -m benchmark.probe", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("output", type=Path, help="where the JSON report is written")
    parser.add_argument("target", help="a training script (path.py) or module:function")
    parser.add_argument("arguments", nargs=argparse.REMAINDER, help="the target's arguments, --report_to included")
    args = parser.parse_args()
    args.output.unlink(missing_ok=True)
    # The Trainer looks reporters up by name; an instance registered there is used as it is.
    integration_utils.INTEGRATION_TO_CALLBACK[REPORTER] = ProbeCallback(args.output)
    run_target(args.target, args.arguments)
    if not args.output.is_file():
        sys.exit(f"benchmark.probe: {args.target} finished without training with --report_to {REPORTER}")


if __name__ == "__main__":
    main()
