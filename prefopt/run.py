"""The steps around the trainer that every script takes: logging, the start of a run, and its end.

At the start: check that accelerate's processes joined one run, lock the outputs, log the effective batch. At the
end, on the main process while the others wait: merge the adapter into the base model, check the merge on a few
examples of the run's data, and plot the losses.
"""

import json
import logging
import os
import resource
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils.memory import clear_device_cache
from datasets import Dataset
from trl import ModelConfig, ScriptArguments

from prefopt.atomic import atomic_file
from prefopt.config import RunArguments
from prefopt.errors import UserError
from prefopt.locking import lock_outputs
from prefopt.merge import merge_adapter
from prefopt.merge_check import CheckBatch
from prefopt.model_card import TrainingRun
from prefopt.plotting import loss_figure, save_figure
from prefopt.run_logs import read_trainer_state

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


def finish_run(
    script_args: ScriptArguments,
    training_args,
    model_args: ModelConfig,
    run_args: RunArguments,
    train_dataset: Dataset,
    eval_dataset: Dataset | None,
) -> None:
    """Merge `output_dir`'s adapter into `merged_model_dir`, checked on the first rows of the data the run evaluated
    on (else of its training data), and plot the losses.

    Call it after the trainer and its model are deleted: the merge loads an unquantized copy of the base.
    """
    clear_device_cache(garbage_collection=True)
    state = PartialState()
    if state.is_main_process:
        output_dir = Path(training_args.output_dir)
        write_resource_usage(output_dir / RESOURCE_USAGE_FILE)  # before the merge adds its own
        if run_args.merge and model_args.use_peft:  # a full fine-tune is already whole in output_dir
            check_data, split = (
                (eval_dataset, script_args.dataset_test_split)
                if eval_dataset is not None
                else (train_dataset, script_args.dataset_train_split)
            )
            merge_adapter(
                output_dir,
                run_args.merged_model_dir,
                model_args,
                CheckBatch.from_dataset(check_data, script_args.dataset_name, split),
                run_args.merged_dtype,
                training_args.trust_remote_code,
                training_run(script_args, training_args, model_args, state),
            )
        run_name = output_dir.name
        save_figure(loss_figure(output_dir, run_name), Path(run_args.images_dir) / f"{run_name}_train_loss.png")
    state.wait_for_everyone()


# The algorithms' own settings, those the trainer's config has, for the model card.
ALGORITHM_SETTINGS = ("beta", "loss_type", "simpo_gamma", "cpo_alpha", "desirable_weight", "undesirable_weight")


def training_run(
    script_args: ScriptArguments, training_args, model_args: ModelConfig, state: PartialState
) -> TrainingRun:
    """What the model card says of this run: the algorithm and its settings, LoRA, the schedule, data, time, hardware."""
    algorithm = type(training_args).__name__.removesuffix("Config").lower()  # DPOConfig, KTOConfig, SimPOConfig
    trainer_state = read_trainer_state(training_args.output_dir)
    runtime = next(entry["train_runtime"] for entry in trainer_state["log_history"] if "train_runtime" in entry)
    device = torch.cuda.get_device_name() if state.device.type == "cuda" else state.device.type
    batch = training_args.per_device_train_batch_size * state.num_processes * training_args.gradient_accumulation_steps
    settings = {
        "algorithm": ", ".join(
            [algorithm.upper()]
            + [
                f"{key} {_text(getattr(training_args, key))}"
                for key in ALGORITHM_SETTINGS
                if hasattr(training_args, key)
            ]
        ),
        "LoRA": (
            f"r {model_args.lora_r}, alpha {model_args.lora_alpha}, dropout {model_args.lora_dropout:g}, target "
            f"modules {_text(model_args.lora_target_modules)}"
            + ("; trained on the base quantized to 4 bits (QLoRA)" if model_args.load_in_4bit else "")
        ),
        "optimization": (
            f"learning rate {training_args.learning_rate:g}, {training_args.lr_scheduler_type.value} schedule, "
            f"warmup_steps {training_args.warmup_steps:g}, {trainer_state['global_step']} steps "
            f"({trainer_state['epoch']:.3g} epochs), effective batch {batch}, max_length {training_args.max_length}"
        ),
        "data": f"{script_args.dataset_name} [{script_args.dataset_train_split}]",
        "training time": f"{runtime:.0f} s on {state.num_processes} x {device}",
    }
    return TrainingRun(algorithm, settings)


def _text(value) -> str:
    if isinstance(value, list):
        return ", ".join(map(str, value))
    return f"{value:g}" if isinstance(value, float) else str(value)


def write_resource_usage(path: Path) -> None:
    """This process's CPU time and peak memory so far; CPU time, unlike wall time, barely changes on a shared machine.

    Peak memory is the accelerator allocator's peak, or without an accelerator the process's peak resident set.
    """
    usage = resource.getrusage(resource.RUSAGE_SELF)
    if torch.accelerator.is_available():
        peak, measure = torch.accelerator.max_memory_allocated(), f"{torch.accelerator.current_accelerator()} allocated"
    else:  # ru_maxrss is in KiB on Linux, in bytes on macOS
        peak, measure = usage.ru_maxrss * (1 if sys.platform == "darwin" else 1024), "process resident set"
    record = {"cpu_time_s": usage.ru_utime + usage.ru_stime, "peak_memory_bytes": peak, "memory_measure": measure}
    with atomic_file(path) as staging:
        staging.write_text(json.dumps(record) + "\n")
