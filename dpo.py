"""Direct Preference Optimization (DPO) of a LoRA adapter, merged into its base model at the end.

    python dpo.py --config training_configs/dpo_v1.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml dpo.py --config training_configs/dpo_v1.yaml
    python dpo.py --config training_configs/dpo_v1.yaml --learning_rate 1e-4 --beta 0.2

Keys are the fields of TRL's `ScriptArguments`, `DPOConfig` and `ModelConfig`, plus `prefopt.config.RunArguments`.
With a LoRA adapter the reference model is the base with the adapter disabled: no second copy in memory.
"""

from accelerate import PartialState
from trl import DPOConfig, DPOTrainer, get_peft_config

from prefopt.checkpoints import resume_checkpoint, with_atomic_checkpoints
from prefopt.config import parse_args
from prefopt.data import load_preference_data
from prefopt.errors import exit_on_user_error
from prefopt.merge import publish_model
from prefopt.merge_check import CheckBatch
from prefopt.model_card import TrainingRun
from prefopt.modeling import load_model, load_tokenizer
from prefopt.plotting import plot_losses
from prefopt.run import configure_logging, save_resource_usage, start_run
from prefopt.stopping import with_safe_stops


def main(script_args, training_args, model_args, run_args):
    # Tokenizer & data, checked before the model is loaded
    tokenizer = load_tokenizer(model_args, run_args.chat_template_path, training_args.trust_remote_code)
    train_dataset, eval_dataset = load_preference_data(script_args, training_args, run_args, tokenizer)

    # Run: the only one writing to its outputs, resumed from its own newest complete checkpoint if asked
    start_run(training_args, run_args)
    checkpoint = resume_checkpoint(script_args, training_args, model_args)

    # Model
    model = load_model(model_args, training_args.trust_remote_code)

    # Training: stops at the first non-finite loss or gradient norm, and on SIGTERM or SIGINT once it has saved
    # a checkpoint of the step in progress
    trainer = with_safe_stops(with_atomic_checkpoints(DPOTrainer))(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=checkpoint)
    trainer.save_model()
    trainer.save_state()
    del trainer, model

    # The final model to merged_model_dir (the adapter merged into the base, or the full fine-tune), checked on the
    # run's own data, & plot, on the main process; the others wait
    state = PartialState()
    if state.is_main_process:
        save_resource_usage(training_args.output_dir)
        if run_args.merge:
            publish_model(
                training_args.output_dir,
                run_args.merged_model_dir,
                model_args,
                check_batch=CheckBatch.of_run(script_args, run_args, train_dataset, eval_dataset),
                merged_dtype=run_args.merged_dtype,
                trust_remote_code=training_args.trust_remote_code,
                training=TrainingRun.of(script_args, training_args, model_args, run_args),
            )
        plot_losses(training_args.output_dir, run_args.images_dir)
    state.wait_for_everyone()


if __name__ == "__main__":
    configure_logging()
    with exit_on_user_error():
        main(*parse_args(DPOConfig))
