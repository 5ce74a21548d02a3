"""The steps around the trainer that every script takes: logging, the start of a run, and its resource usage.

At the start: check that accelerate's processes joined one run, lock the outputs, log the effective batch. After
training, on the main process: record the CPU time and peak memory the training took, before the merge adds its own.
"""

import json
import logging
import os
import resource
import sys
from pathlib import Path

import torch
from accelerate import PartialState

from prefopt.atomic import atomic_file
from prefopt.config import RunArguments
from prefopt.errors import UserError
from prefopt.locking import lock_outputs

RESOURCE_USAGE_FILE = "resource_usage.json"  # in output_dir: the training process's CPU time and peak memory

logger = logging.getLogger(__name__)


def configure_logging() -> None:
    """Our messages at INFO on the main process and WARNING on the others; the libraries log as they do for TRL.

    Called before the config is parsed, which logs notes on it; accelerate and torchrun set RANK in each process.
    """
    main_process = int(os.environ.get("RANK", "0")) == 0
    logging.basicConfig(
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        level=logging.INFO if main_process else logging.WARNING,
    )


def start_run(training_args, run_args: RunArguments) -> None:
    """Before the model loads: the processes form one run, no other run writes here, and the batch is as meant."""
    launched = int(os.environ.get("WORLD_SIZE", "1"))
    state = PartialState()
    if state.num_processes < launched:
        raise UserError(
            f"accelerate started {launched} processes but they did not join one run; on a machine without GPUs "
            "set use_cpu: true (or --use_cpu true)"
        )
    lock_outputs(training_args.output_dir, run_args.merged_model_dir)
    per_device = training_args.per_device_train_batch_size
    accumulation = training_args.gradient_accumulation_steps
    logger.info(
        "effective batch size %d = %d per device x %d process(es) x %d accumulation step(s); learning rate %g, %s "
        "schedule, warmup_steps %g",
        per_device * state.num_processes * accumulation,
        per_device,
        state.num_processes,
        accumulation,
        training_args.learning_rate,
        training_args.lr_scheduler_type.value,
        training_args.warmup_steps,
    )


def save_resource_usage(output_dir: str | Path) -> Path:
    """This process's CPU time and peak memory so far, in `output_dir/resource_usage.json`; CPU time, unlike wall
    time, barely changes on a shared machine.

    Peak memory is the accelerator allocator's peak, or without an accelerator the process's peak resident set.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if torch.accelerator.is_available():
        peak, measure = torch.accelerator.max_memory_allocated(), f"{torch.accelerator.current_accelerator()} allocated"
    else:  # ru_maxrss is in KiB on Linux, in bytes on macOS
        peak, measure = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024), "process resident set"
    record = {"cpu_time_s": usage.ru_utime + usage.ru_stime, "peak_memory_bytes": peak, "memory_measure": measure}
    path = Path(output_dir) / RESOURCE_USAGE_FILE
    with atomic_file(path) as staging:
        staging.write_text(json.dumps(record) + "\n")
    return path
