"""What training a model cost, read from its run: train time, tokens per second, the process's CPU time and peak
memory, and the step from which the loss is stable."""

import json
from collections.abc import Sequence
from pathlib import Path

from experiment.convergence import smooth, steps_to_stable_loss
from experiment.log_probs import PromptCompletion
from prefopt.run import RESOURCE_USAGE_FILE
from prefopt.run_logs import loss_curves, read_trainer_state


def train_tokens_per_epoch(pairs: Sequence[tuple[PromptCompletion, PromptCompletion]]) -> int:
    """Tokens of one pass over the train pairs: prompt + chosen and prompt + rejected, as all three trainers see them.

    Counted from the data because TRL's CPOTrainer (SimPO) does not log `num_tokens`; on the same data this equals
    what DPOTrainer and KTOTrainer log (without truncation to `max_length`).
    """
    return sum(len(prompt) + len(completion) for pair in pairs for prompt, completion in pair)


def training_cost(run_dir: str | Path, tokens_per_epoch: int) -> dict:
    """Train time, tokens per second, the process's CPU time and peak memory, and loss convergence of a run."""
    run_dir = Path(run_dir)
    state = read_trainer_state(run_dir)
    history = state["log_history"]
    runtime = next(entry["train_runtime"] for entry in reversed(history) if "train_runtime" in entry)
    steps, losses = loss_curves(history)["train"]
    smoothed = smooth(losses)
    usage_file = run_dir / RESOURCE_USAGE_FILE  # written by the scripts after training
    usage = json.loads(usage_file.read_text()) if usage_file.is_file() else None
    tokens = state["epoch"] * tokens_per_epoch
    stable_step = steps_to_stable_loss(steps, losses)
    return {
        "run_dir": str(run_dir),
        "steps": state["global_step"],
        "epochs": state["epoch"],
        "train_runtime_s": runtime,
        "train_tokens": round(tokens),
        "tokens_per_second": tokens / runtime,
        "process_cpu_time_s": usage["cpu_time_s"] if usage else None,
        "peak_memory_mb": usage["peak_memory_bytes"] / 2**20 if usage else None,
        "initial_loss": smoothed[0],
        "final_loss": smoothed[-1],
        "steps_to_stable_loss": stable_step,
        "epochs_to_stable_loss": stable_step / state["global_step"] * state["epoch"],  # KTO: 2 steps per pair
    }
