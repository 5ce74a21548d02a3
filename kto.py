"""Kahneman-Tversky Optimization (KTO) of a LoRA adapter, merged into its base model at the end.

    python kto.py --config training_configs/kto_v1.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml kto.py --config training_configs/kto_v1.yaml
    python kto.py --config training_configs/kto_v1.yaml --desirable_weight 1.2

Keys are the fields of TRL's `ScriptArguments`, `KTOConfig` and `ModelConfig`, plus `prefopt.config.RunArguments`.
KTO learns from unpaired data (prompt, completion, label); paired data (prompt, chosen, rejected) is unpaired
into one desirable and one undesirable example per pair, then shuffled with the run's seed.
"""

import logging

from accelerate import PartialState
from trl import KTOConfig, KTOTrainer, get_peft_config

from prefopt.checkpoints import resume_checkpoint, with_atomic_checkpoints
from prefopt.config import parse_args
from prefopt.data import load_preference_data, unpaired_shuffled
from prefopt.errors import UserError, exit_on_user_error
from prefopt.merge import publish_model
from prefopt.merge_check import CheckBatch
from prefopt.model_card import TrainingRun
from prefopt.modeling import load_model, load_tokenizer
from prefopt.plotting import plot_losses
from prefopt.run import configure_logging, save_resource_usage, start_run
from prefopt.stopping import with_safe_stops

logger = logging.getLogger("kto")


def balance_class_weights(training_args: KTOConfig, labels: list[bool]) -> None:
    """Hold lambda_D * n_D / (lambda_U * n_U) in [1, 4/3], the KTO paper's rule for unbalanced data.

    Weights left at their defaults (1, 1) are set to meet the rule; weights the config chose are only checked.
    """
    desirable = sum(labels)
    undesirable = len(labels) - desirable
    if desirable == 0 or undesirable == 0:
        raise UserError(f"KTO needs desirable and undesirable examples; got {desirable} and {undesirable}")
    logger.info("KTO examples: %d desirable, %d undesirable", desirable, undesirable)
    ratio = training_args.desirable_weight * desirable / (training_args.undesirable_weight * undesirable)
    if 1 <= ratio <= 4 / 3:
        return
    if (training_args.desirable_weight, training_args.undesirable_weight) != (1.0, 1.0):
        logger.warning("desirable/undesirable weighted ratio %.2f is outside the KTO paper's [1, 4/3]", ratio)
        return
    if desirable < undesirable:
        training_args.desirable_weight = undesirable / desirable
    else:
        training_args.undesirable_weight = desirable / undesirable
    logger.info(
        "unbalanced data: desirable_weight %.3g, undesirable_weight %.3g (weighted ratio 1, KTO paper: [1, 4/3])",
        training_args.desirable_weight,
        training_args.undesirable_weight,
    )


def main(script_args, training_args, model_args, run_args):
    # Tokenizer & data, checked before the model is loaded
    tokenizer = load_tokenizer(model_args, run_args.chat_template_path, training_args.trust_remote_code)
    train_dataset, eval_dataset = load_preference_data(
        script_args, training_args, run_args, tokenizer, unpaired_ok=True
    )
    train_dataset = unpaired_shuffled(train_dataset, training_args.seed)
    if eval_dataset is not None:
        eval_dataset = unpaired_shuffled(eval_dataset, training_args.seed)
    balance_class_weights(training_args, train_dataset["label"])

    # Run: the only one writing to its outputs, resumed from its own newest complete checkpoint if asked
    start_run(training_args, run_args)
    checkpoint = resume_checkpoint(script_args, training_args, model_args)

    # Model
    model = load_model(model_args, training_args.trust_remote_code)

    # Training: stops at the first non-finite loss or gradient norm, and on SIGTERM or SIGINT once it has saved
    # a checkpoint of the step in progress
    trainer = with_safe_stops(with_atomic_checkpoints(KTOTrainer))(
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
        main(*parse_args(KTOConfig))
