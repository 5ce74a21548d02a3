"""After training: the merged model and the loss plot, written by the main process while the others wait."""

import json
import resource
import sys
from pathlib import Path

import torch
from accelerate import PartialState
from accelerate.utils.memory import clear_device_cache
from trl import ModelConfig

from prefopt.atomic import atomic_file
from prefopt.config import RunArguments
from prefopt.merge import merge_adapter
from prefopt.plotting import plot_losses

RESOURCE_USAGE_FILE = "resource_usage.json"  # in output_dir, read by prefopt.evaluate


def finish_run(training_args, model_args: ModelConfig, run_args: RunArguments) -> None:
    """Merge `output_dir`'s adapter into `merged_model_dir` and plot the losses into `images_dir`.

    Call it after the trainer and its model are deleted: the merge loads a second, unquantized copy of the base.
    """
    clear_device_cache(garbage_collection=True)
    state = PartialState()
    if state.is_main_process:
        output_dir = Path(training_args.output_dir)
        write_resource_usage(output_dir / RESOURCE_USAGE_FILE)  # before the merge adds its own
        if run_args.merge and model_args.use_peft:  # a full fine-tune is already whole in output_dir
            merge_adapter(output_dir, run_args.merged_model_dir, model_args, training_args.trust_remote_code)
        run_name = output_dir.name
        plot_losses(
            output_dir / "trainer_state.json", Path(run_args.images_dir) / f"{run_name}_train_loss.png", run_name
        )
    state.wait_for_everyone()


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
