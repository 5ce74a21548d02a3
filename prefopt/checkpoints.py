"""Checkpoints that are whole or absent, and resuming from the newest whole one.

transformers' Trainer writes a checkpoint straight into `checkpoint-N`, and `get_last_checkpoint` takes the highest N
without looking inside: a run killed during a save left a directory that the next run resumed into a traceback, and
`save_total_limit` could delete the last good checkpoint to keep it. Here every process writes its part of a
checkpoint under a staging name, and the checkpoint is renamed into place once all of them have. On resume, the
newest checkpoints that are not whole (left by an older version, a full disk or a copy cut short) are moved aside.
"""

import contextlib
import json
import logging
import os
import shutil
import zipfile
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import gather_object
from safetensors import SafetensorError, safe_open
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, get_last_checkpoint, rotate_checkpoints

from prefopt.errors import UserError

# Both names are outside the `checkpoint-*` that rotation and `get_last_checkpoint` read, and a hub upload skips `_*`.
STAGING_PREFIX = "_staging-"
INCOMPLETE_PREFIX = "_incomplete-"

# What a run resumes from, each with the names that can hold it: DeepSpeed keeps the weights, the optimizer and the
# scheduler in `global_step<N>/`, FSDP its shards in `*_0/` directories.
CHECKPOINT_PARTS = {
    TRAINER_STATE_NAME: (TRAINER_STATE_NAME,),
    "weights": (
        "adapter_model.safetensors",
        "model.safetensors",
        "model.safetensors.index.json",
        "pytorch_model_fsdp*",
        "global_step*",
    ),
    "optimizer state": ("optimizer.pt", "optimizer.bin", "optimizer_0", "global_step*"),
    "scheduler state": ("scheduler.pt", "global_step*"),
    "RNG state": ("rng_state.pth", "rng_state_*.pth"),
}

logger = logging.getLogger(__name__)


class AtomicCheckpoints:
    """A Trainer mixin: a checkpoint appears as `checkpoint-N` only once every process has written its part.

    Trainer and TRL write as usual, into `_staging-checkpoint-N/checkpoint-N`, which `_get_output_dir` points them
    to for the length of the save. After a barrier, each writing process (`args.should_save`: the main process, or
    each node's with `save_on_each_node`) renames it into place; rotation then runs on the real checkpoints, so that
    it keeps the newest and the best one. A hub push of the checkpoint waits for its final name.
    """

    _staging_root: str | None = None
    _push_deferred = False

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_root is not None:  # an asynchronous upload would read a folder about to be renamed
            self._push_deferred = True
        else:
            super()._push_from_checkpoint(checkpoint_folder)

    def _save_checkpoint(self, model, trial) -> None:
        run_dir = self._get_output_dir(trial)
        name = f"{PREFIX_CHECKPOINT_DIR}-{self.state.global_step}"
        final, staging_root = os.path.join(run_dir, name), os.path.join(run_dir, STAGING_PREFIX + name)
        staged = os.path.join(staging_root, name)
        # Before anyone writes: what an interrupted save of this step left, on each node's disk, and a checkpoint of
        # this step from an earlier run, whose files would otherwise mix with this one's.
        if self.is_local_process_zero():
            shutil.rmtree(staging_root, ignore_errors=True)
        if self.args.should_save:
            shutil.rmtree(final, ignore_errors=True)
        self.accelerator.wait_for_everyone()

        self._staging_root = staging_root
        try:
            super()._save_checkpoint(model, trial)
        finally:
            self._staging_root = None
        # Trainer recorded this step as the best under its staging path, in memory and in the state it just saved.
        if self.state.best_model_checkpoint and os.path.normpath(self.state.best_model_checkpoint) == staged:
            self.state.best_model_checkpoint = final
            if self.args.should_save:
                self.state.save_to_json(os.path.join(staged, TRAINER_STATE_NAME))

        self.accelerator.wait_for_everyone()  # every process wrote its part: rng_state_<rank>.pth, shards
        if self.args.should_save:
            # With save_on_each_node on a shared file system, another node's writer may have renamed it already.
            with contextlib.suppress(FileNotFoundError):
                os.rename(staged, final)
            rotate_checkpoints(run_dir, self.args.save_total_limit, self.state.best_model_checkpoint, use_mtime=True)
        self.accelerator.wait_for_everyone()
        if self.is_local_process_zero():
            shutil.rmtree(staging_root, ignore_errors=True)
        if self._push_deferred:
            self._push_deferred = False
            super()._push_from_checkpoint(final)


def with_atomic_checkpoints(trainer_class: type) -> type:
    """`trainer_class` (DPOTrainer, KTOTrainer, CPOTrainer...) with `AtomicCheckpoints`."""
    return type(f"Atomic{trainer_class.__name__}", (AtomicCheckpoints, trainer_class), {})


def checkpoint_problem(checkpoint: str | Path) -> str | None:
    """Why a run cannot resume from `checkpoint`, or None: every part present, and every file readable and whole.

    Reads each file once: safetensors headers against the file's size, torch files' zip CRCs, JSON.
    """
    checkpoint = Path(checkpoint)
    for part, names in CHECKPOINT_PARTS.items():
        if not any(any(checkpoint.glob(name)) for name in names):
            return f"no {part}"
    for path in sorted(checkpoint.rglob("*")):
        problem = file_problem(path)
        if problem:
            return f"{path.relative_to(checkpoint)} {problem}"
    return None


def file_problem(path: Path) -> str | None:
    """Why a file of a checkpoint or model cannot be read whole, or None; only safetensors, torch and JSON files are
    read."""
    try:
        if path.suffix == ".safetensors":
            with safe_open(path, "pt"):
                pass
        elif path.suffix in (".pt", ".pth", ".bin"):  # torch.save writes zip archives
            with zipfile.ZipFile(path) as archive:
                if archive.testzip() is not None:
                    return "fails its CRC check"
        elif path.suffix == ".json":
            json.loads(path.read_text())
    except (SafetensorError, zipfile.BadZipFile, json.JSONDecodeError, UnicodeDecodeError):
        return "is truncated or corrupt"
    return None


def resume_checkpoint(training_args) -> str | None:
    """The checkpoint the run resumes from: `resume_from_checkpoint` as given (checked when parsed), or for `true` the
    newest complete one in `output_dir`, or None to train from scratch.

    Newer checkpoints that are not complete are moved aside as `_incomplete-checkpoint-N` by the processes that write
    checkpoints; then every process takes the newest one left, and all must have found the same.
    """
    if training_args.resume_from_checkpoint is not True:
        return training_args.resume_from_checkpoint
    output_dir = training_args.output_dir
    state = PartialState()
    # The main process first, then the other writers (with save_on_each_node), which find their node's disk, or on a
    # shared file system what the main process left.
    skipped = _set_aside_incomplete(output_dir) if state.is_main_process else []
    state.wait_for_everyone()
    if training_args.should_save and not state.is_main_process:
        skipped = _set_aside_incomplete(output_dir)
    state.wait_for_everyone()
    checkpoint = get_last_checkpoint(output_dir) if os.path.isdir(output_dir) else None
    found = set(gather_object([checkpoint]))
    if len(found) > 1:
        raise UserError(
            f"resume_from_checkpoint: the processes found different checkpoints in {output_dir} "
            f"({', '.join(sorted(map(str, found)))}); put output_dir on a file system that every node shares, or set "
            "save_on_each_node: true"
        )
    decision = (
        f"resuming from {checkpoint}"
        if checkpoint
        else f"no complete checkpoint in {output_dir}: training from scratch"
    )
    if skipped:
        logger.warning("; ".join([decision, *skipped]))
    elif state.is_main_process:
        logger.info(decision)
    return checkpoint


def _set_aside_incomplete(output_dir: str) -> list[str]:
    """Rename the newest checkpoints until a complete one is the newest; also drop what interrupted saves staged."""
    if not os.path.isdir(output_dir):
        return []
    for staging_root in Path(output_dir).glob(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(staging_root, ignore_errors=True)  # never a checkpoint: the save did not finish
    skipped = []
    while (checkpoint := get_last_checkpoint(output_dir)) is not None:
        problem = checkpoint_problem(checkpoint)
        if problem is None:
            break
        aside = _free_name(Path(output_dir) / f"{INCOMPLETE_PREFIX}{Path(checkpoint).name}")
        os.rename(checkpoint, aside)
        skipped.append(f"{Path(checkpoint).name} is incomplete ({problem}), moved aside to {aside.name}")
    return skipped


def _free_name(path: Path) -> Path:
    """`path`, or `path-2`, `path-3`... if taken: a checkpoint set aside before is kept too."""
    candidate, number = path, 1
    while candidate.exists():
        number += 1
        candidate = path.with_name(f"{path.name}-{number}")
    return candidate
