"""Checkpoints that are whole or absent, and resuming from the newest whole one.

transformers' Trainer writes a checkpoint straight into `checkpoint-N`, and `get_last_checkpoint` takes the highest N
without looking inside: a run killed during a save left a directory that the next run resumed into a traceback, and
`save_total_limit` could delete the last good checkpoint to keep it. Here every process writes its part of a
checkpoint under a staging name, and the checkpoint is renamed into place once all of them have. On resume, the
newest checkpoints of the run that are not whole (left by an older version, a full disk or a copy cut short) are
moved aside, and only the run's own checkpoints are resumed from (`prefopt.run_record`). Before the first step,
`output_dir` must have room for the checkpoints the run will hold; a save that still finds the disk full stops the
run in one line, its staging directory removed and the earlier checkpoints whole. So does the final save of the
trained model into `output_dir`, removing what it had half written.
"""

import contextlib
import errno
import json
import logging
import math
import os
import shutil
import zipfile
from pathlib import Path

from accelerate import PartialState
from accelerate.utils import broadcast_object_list, gather_object
from safetensors import SafetensorError, safe_open
from torch import nn
from transformers import TrainerCallback
from transformers.trainer import TRAINER_STATE_NAME
from transformers.trainer_utils import PREFIX_CHECKPOINT_DIR, SaveStrategy, rotate_checkpoints, sort_checkpoints

from prefopt.errors import UserError, error_chain
from prefopt.paths import free_bytes, size_text
from prefopt.run_record import SHAPE_KEYS, TRAINING_KEYS, RunRecord, run_settings

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

# A checkpoint holds each trainable weight three times: the weights and AdamW's two moments (the trainer state, the
# scheduler and the RNG state add a few KB).
CHECKPOINT_COPIES = 3


def trainable_bytes(model: nn.Module) -> int:
    """The size of the model's trainable weights: the adapter's with LoRA (ZeRO-3 keeps a parameter's size aside)."""
    return sum(
        getattr(parameter, "ds_numel", parameter.numel()) * parameter.element_size()
        for parameter in model.parameters()
        if parameter.requires_grad
    )


class AtomicCheckpoints:
    """A Trainer mixin: a checkpoint appears as `checkpoint-N` only once every process has written its part.

    Trainer and TRL write as usual, into `_staging-checkpoint-N/checkpoint-N`, which `_get_output_dir` points them
    to for the length of the save. After a barrier, each writing process (`args.should_save`: the main process, or
    each node's with `save_on_each_node`) renames it into place; rotation then runs on the real checkpoints, so that
    it keeps the newest and the best one. A hub push of the checkpoint waits for its final name. Each checkpoint
    holds a copy of the run's record (`prefopt.run_record`), staged with the rest. `CheckpointRoom` checks the room
    for them before the first step; a save that meets a full disk all the same, a checkpoint's or the final model's,
    raises a `UserError` naming it.
    """

    _staging_root: str | None = None
    _push_deferred = False

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.add_callback(CheckpointRoom())

    def _get_output_dir(self, trial) -> str:
        return self._staging_root or super()._get_output_dir(trial)

    def _push_from_checkpoint(self, checkpoint_folder: str) -> None:
        if self._staging_root is not None:  # an asynchronous upload would read a folder about to be renamed
            self._push_deferred = True
        else:
            super()._push_from_checkpoint(checkpoint_folder)

    def save_model(self, output_dir: str | None = None, _internal_call: bool = False) -> None:
        if _internal_call:  # a checkpoint's weights: `_save_checkpoint` reports a full disk
            return super().save_model(output_dir, _internal_call)
        directory = output_dir or self.args.output_dir
        before = _files_in(directory)
        try:
            super().save_model(output_dir, _internal_call)
        except Exception as error:
            need = trainable_bytes(self.model)
            if not _disk_full(error, directory, need):
                raise
            for name, stat in _files_in(directory).items():  # what this save wrote, cut short by the full disk
                if before.get(name) != stat:
                    os.remove(os.path.join(directory, name))
            step = self.state.global_step
            last = os.path.join(directory, f"{PREFIX_CHECKPOINT_DIR}-{step}")
            then = (
                f"{PREFIX_CHECKPOINT_DIR}-{step}, of the last step, is whole: free space, then run the same command "
                "with resume_from_checkpoint: true to save the model from it"
                if os.path.isdir(last)
                else "no checkpoint holds the last step: free space and train again"
            )
            raise UserError(
                f"the trained model could not be saved: no space left on device in '{directory}' (it needs about "
                f"{size_text(need)}, {size_text(free_bytes(directory))} free); {then}"
            ) from None

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
            run = RunRecord.read(run_dir)
            if self.args.should_save and run:
                run.write(staged)
        except Exception as error:
            shutil.rmtree(staging_root, ignore_errors=True)
            need = CHECKPOINT_COPIES * trainable_bytes(self.model)
            if not _disk_full(error, run_dir, need):
                raise
            raise UserError(
                f"{name} could not be saved: no space left on device in '{run_dir}' (a checkpoint needs about "
                f"{size_text(need)}, {size_text(free_bytes(run_dir))} free); the earlier checkpoints are whole: free "
                "space, then resume with resume_from_checkpoint: true"
            ) from None
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


class CheckpointRoom(TrainerCallback):
    """Before the first step: room in output_dir for the checkpoints the run will hold at once, and its adapter.

    It holds `save_total_limit + 1` checkpoints (a new one is whole before rotation deletes the oldest), or every
    save left in the run when that is fewer or no limit is set.
    """

    def on_train_begin(self, args, state, control, model=None, **kwargs):
        problem = None
        if args.should_save:
            weights = trainable_bytes(model)
            checkpoints = _checkpoints_held(args, state)
            need, free = (CHECKPOINT_COPIES * checkpoints + 1) * weights, free_bytes(args.output_dir)
            if free < need:
                problem = (
                    f"output_dir '{args.output_dir}': {size_text(free)} free on its file system, and the run needs "
                    f"about {size_text(need)} ({checkpoints} checkpoint(s) of {size_text(CHECKPOINT_COPIES * weights)} "
                    f"and the adapter of {size_text(weights)}); free space, lower save_total_limit, or choose another "
                    "output_dir"
                )
        problems = [problem for problem in gather_object([problem]) if problem]
        if problems:
            raise UserError(problems[0])


def _checkpoints_held(args, state) -> int:
    steps_left = state.max_steps - state.global_step
    if args.save_strategy == SaveStrategy.NO:
        saves = 0
    elif args.save_strategy == SaveStrategy.EPOCH:
        saves = math.ceil(state.num_train_epochs - state.epoch)
    else:  # every save_steps, and at the end; with "best", at most every evaluation
        saves = math.ceil(
            steps_left / (state.eval_steps if args.save_strategy == SaveStrategy.BEST else state.save_steps)
        )
    return min(saves, args.save_total_limit + 1) if args.save_total_limit else saves


def _disk_full(error: BaseException, directory: str, need: int) -> bool:
    """Whether a failed save ran out of space: ENOSPC in the chain (safetensors says it only in its message, torch's
    zip writer not at all), or less room left than a checkpoint needs."""
    for cause in error_chain(error):
        if getattr(cause, "errno", None) in (errno.ENOSPC, errno.EDQUOT) or "No space left on device" in str(cause):
            return True
    return free_bytes(directory) < need


def _files_in(directory: str) -> dict[str, tuple[int, int]]:
    """{name: (modification time, size)} of the files directly in `directory`."""
    if not os.path.isdir(directory):
        return {}
    return {
        entry.name: (entry.stat().st_mtime_ns, entry.stat().st_size)
        for entry in os.scandir(directory)
        if entry.is_file()
    }


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


def resume_checkpoint(script_args, training_args, model_args) -> str | None:
    """The checkpoint this run resumes from, or None to train from scratch; the run is recorded in `output_dir`.

    A named `resume_from_checkpoint` (checked when parsed) continues the run that saved it, if the model and LoRA
    shape are the config's. `true` continues the run recorded in `output_dir` from its newest complete checkpoint by
    step, if the config still has that run's settings: its newer checkpoints that are not complete are moved aside
    first (by the processes that write checkpoints), and other runs' checkpoints are left alone. With no checkpoint
    to continue from, a new run starts. Every process must find the same checkpoint.
    """
    settings = run_settings(script_args, training_args, model_args)
    resume, output_dir = training_args.resume_from_checkpoint, training_args.output_dir
    state = PartialState()
    notes = []
    if resume is True:
        recorded = RunRecord.read(output_dir)
        # The main process first, then the other writers (with save_on_each_node), which find their node's disk, or
        # on a shared file system what the main process left.
        notes = _set_aside_incomplete(output_dir, recorded) if state.is_main_process else []
        state.wait_for_everyone()
        if training_args.should_save and not state.is_main_process:
            notes = _set_aside_incomplete(output_dir, recorded)
        state.wait_for_everyone()
        own = _checkpoints_of(output_dir, recorded)
        checkpoint = own[-1] if own else None
        found = set(gather_object([checkpoint]))
        if len(found) > 1:
            raise UserError(
                f"resume_from_checkpoint: the processes found different checkpoints in {output_dir} "
                f"({', '.join(sorted(map(str, found)))}); put output_dir on a file system that every node shares, or "
                "set save_on_each_node: true"
            )
        if state.is_main_process:
            notes += _not_resumed(output_dir, recorded)
    else:
        checkpoint = resume
    saved_by = RunRecord.read(checkpoint) if checkpoint else None
    if saved_by:
        _refuse_other_settings(checkpoint, saved_by, settings, named=resume is not True)

    # A named checkpoint's run continues with this config's settings; a new run gets an id the processes share.
    run = RunRecord(saved_by.run_id, saved_by.started, settings) if saved_by else None
    run = broadcast_object_list([run or RunRecord.new(settings)])[0]
    if training_args.should_save:
        Path(output_dir).mkdir(parents=True, exist_ok=True)
        run.write(output_dir)
    if resume is True:
        decision = (
            f"resuming from {checkpoint}"
            if checkpoint
            else f"no complete checkpoint of this run in {output_dir}: training from scratch"
        )
        if notes:
            logger.warning("; ".join([decision, *notes]))
        elif state.is_main_process:
            logger.info(decision)
    return checkpoint


def _refuse_other_settings(checkpoint: str, saved_by: RunRecord, settings: dict, named: bool) -> None:
    """Refuse a checkpoint whose tensors do not fit the config, or, unless named, that another config trained."""
    shape = saved_by.differences(settings, SHAPE_KEYS)
    if shape:
        raise UserError(
            f"resume_from_checkpoint: {checkpoint} was trained with {'; '.join(shape)}; set them back to resume it, "
            "or start a new run (without resume_from_checkpoint, or in another output_dir)"
        )
    training = [] if named else saved_by.differences(settings, TRAINING_KEYS)
    if training:
        raise UserError(
            f"resume_from_checkpoint: {checkpoint} was saved by a run with {'; '.join(training)}; set them back to "
            f"continue that run, name the checkpoint (resume_from_checkpoint: {checkpoint}) to continue it with these "
            "settings, or start a new run (without resume_from_checkpoint, or in another output_dir)"
        )


def _checkpoints_of(output_dir: str, run: RunRecord | None) -> list[str]:
    """The checkpoints in `output_dir` that `run` saved, oldest first by step."""
    if run is None:
        return []
    return [
        checkpoint
        for checkpoint in sort_checkpoints(output_dir)
        if (saved_by := RunRecord.read(checkpoint)) and saved_by.run_id == run.run_id
    ]


def _not_resumed(output_dir: str, run: RunRecord | None) -> list[str]:
    """What is said of the checkpoints in `output_dir` that `run` did not save."""
    own = _checkpoints_of(output_dir, run)
    others = [checkpoint for checkpoint in sort_checkpoints(output_dir) if checkpoint not in own]
    unrecorded = [Path(checkpoint).name for checkpoint in others if RunRecord.read(checkpoint) is None]
    another = [Path(checkpoint).name for checkpoint in others if Path(checkpoint).name not in unrecorded]
    notes = []
    if another:
        notes.append(f"{', '.join(another)} saved by another run, not resumed")
    if unrecorded:
        notes.append(
            f"{', '.join(unrecorded)} record no run (saved by an older version or another program), not resumed: name "
            "one in resume_from_checkpoint to resume from it"
        )
    return notes


def _set_aside_incomplete(output_dir: str, run: RunRecord | None) -> list[str]:
    """Rename the run's newest checkpoints until a complete one is its newest; also drop what interrupted saves
    staged."""
    if not os.path.isdir(output_dir):
        return []
    for staging_root in Path(output_dir).glob(f"{STAGING_PREFIX}{PREFIX_CHECKPOINT_DIR}-*"):
        shutil.rmtree(staging_root, ignore_errors=True)  # never a checkpoint: the save did not finish
    skipped = []
    for checkpoint in reversed(_checkpoints_of(output_dir, run)):
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
