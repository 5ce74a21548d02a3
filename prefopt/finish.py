"""After training: the merged model and the loss plot, written by the main process while the others wait."""

from pathlib import Path

from accelerate import PartialState
from accelerate.utils.memory import clear_device_cache
from trl import ModelConfig

from prefopt.config import RunArguments
from prefopt.merge import merge_adapter
from prefopt.plotting import plot_losses


def finish_run(training_args, model_args: ModelConfig, run_args: RunArguments) -> None:
    """Merge `output_dir`'s adapter into `merged_model_dir` and plot the losses into `images_dir`.

    Call it after the trainer and its model are deleted: the merge loads a second, unquantized copy of the base.
    """
    clear_device_cache(garbage_collection=True)
    state = PartialState()
    if state.is_main_process:
        output_dir = Path(training_args.output_dir)
        if run_args.merge and model_args.use_peft:  # a full fine-tune is already whole in output_dir
            merge_adapter(output_dir, run_args.merged_model_dir, model_args, training_args.trust_remote_code)
        run_name = output_dir.name
        plot_losses(output_dir / "trainer_state.json", Path(run_args.images_dir) / f"{run_name}_train_loss.png", run_name)
    state.wait_for_everyone()
