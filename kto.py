"""Kahneman-Tversky Optimization (KTO) of a LoRA adapter, merged into its base model at the end.

    python kto.py --config training_configs/kto_v1.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml kto.py --config training_configs/kto_v1.yaml
    python kto.py --config training_configs/kto_v1.yaml --desirable_weight 1.2

Keys are the fields of TRL's `ScriptArguments`, `KTOConfig` and `ModelConfig`, plus `prefopt.config.RunArguments`.
KTO learns from unpaired data (prompt, completion, label); paired data (prompt, chosen, rejected) is unpaired
into one desirable and one undesirable example per pair, then shuffled with the run's seed.
"""

import logging

from trl import KTOConfig, KTOTrainer, get_peft_config

from prefopt.config import configure_logging, describe_batch, parse_args
from prefopt.data import load_preference_dataset, select_splits, unpaired_shuffled
from prefopt.errors import exit_on_user_error
from prefopt.finish import finish_run
from prefopt.modeling import load_model, load_tokenizer

logger = logging.getLogger("kto")


def main(script_args, training_args, model_args, run_args):
    configure_logging(training_args)
    logger.info(describe_batch(training_args))

    # Data
    dataset = load_preference_dataset(script_args)
    train_dataset, eval_dataset = select_splits(
        dataset, script_args, evaluate=training_args.eval_strategy != "no", unpaired_ok=True
    )
    train_dataset = unpaired_shuffled(train_dataset, training_args.seed)
    if eval_dataset is not None:
        eval_dataset = unpaired_shuffled(eval_dataset, training_args.seed)
    desirable = sum(train_dataset["label"])
    logger.info("KTO examples: %d desirable, %d undesirable", desirable, len(train_dataset) - desirable)

    # Model & tokenizer
    tokenizer = load_tokenizer(model_args, training_args.trust_remote_code)
    model = load_model(model_args, training_args.trust_remote_code)

    # Training
    trainer = KTOTrainer(
        model=model,
        args=training_args,
        train_dataset=train_dataset,
        eval_dataset=eval_dataset,
        processing_class=tokenizer,
        peft_config=get_peft_config(model_args),
    )
    trainer.train(resume_from_checkpoint=training_args.resume_from_checkpoint)
    trainer.save_model()
    trainer.save_state()

    # Merge & plot
    del trainer, model
    finish_run(training_args, model_args, run_args)


if __name__ == "__main__":
    with exit_on_user_error():
        main(*parse_args(KTOConfig))
