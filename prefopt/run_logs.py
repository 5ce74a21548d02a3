"""What a run leaves in its `output_dir` for others to read: the Trainer's log history (`trainer_state.json`)."""

import json
from pathlib import Path

from prefopt.errors import UserError

TRAINER_STATE = "trainer_state.json"


def read_trainer_state(run_dir: str | Path) -> dict:
    """The run's `trainer_state.json`, as the Trainer saved it at the end of training."""
    path = Path(run_dir) / TRAINER_STATE
    if not path.is_file():
        raise UserError(f"{run_dir}: no {TRAINER_STATE}; train the run first")
    return json.loads(path.read_text())


def read_log_history(run_dir: str | Path) -> list[dict]:
    """The run's log history: one entry per logging step, evaluation and the end of training."""
    return read_trainer_state(run_dir)["log_history"]


def logged(history: list[dict], key: str) -> tuple[list[int], list[float]]:
    """Steps and values of a logged metric (`loss`, `rewards/margins`, ...); empty if the trainer does not log it."""
    points = [(entry["step"], entry[key]) for entry in history if key in entry]
    steps, values = zip(*points) if points else ((), ())
    return list(steps), list(values)


def loss_curves(history: list[dict]) -> dict[str, tuple[list[int], list[float]]]:
    """{"train": (steps, losses), "eval": (steps, losses)}; a curve the run did not log is left out."""
    curves = {name: logged(history, key) for name, key in (("train", "loss"), ("eval", "eval_loss"))}
    return {name: curve for name, curve in curves.items() if curve[0]}


def epochs_at(history: list[dict], steps: list[int]) -> list[float]:
    """The epoch at each of `steps`: the x axis on which runs with different steps per epoch compare."""
    epoch_at = {entry["step"]: entry["epoch"] for entry in history if "epoch" in entry}
    return [epoch_at[step] for step in steps]
