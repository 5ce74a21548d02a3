"""Simple Preference Optimization (SimPO) of a LoRA adapter, merged into its base model at the end.

    python simpo.py --config training_configs/simpo_v1.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml simpo.py --config training_configs/simpo_v1.yaml
    python simpo.py --config training_configs/simpo_v1.yaml --beta 2.5 --simpo_gamma 1.375

Keys are the fields of TRL's `ScriptArguments`, `CPOConfig` and `ModelConfig`, plus `prefopt.config.RunArguments`.
SimPO is TRL's CPO trainer with `loss_type: simpo` and `cpo_alpha: 0`. It needs no reference model: its reward is
the length-normalised log-probability scaled by `beta`, and `simpo_gamma` is the paper's target margin (in reward
units, like the paper's gamma). The paper's values are beta 2.0-2.5 and gamma/beta about 0.5; with CPO's default
beta 0.1 the scaled reward differences are too small to overcome the margin and the loss barely moves.
"""

from dataclasses import dataclass, field

from trl import get_peft_config
from trl.experimental.cpo import CPOConfig, CPOTrainer

from prefopt.checkpoints import resume_checkpoint, with_atomic_checkpoints
from prefopt.config import parse_args
from prefopt.data import load_preference_data
from prefopt.errors import UserError, exit_on_user_error
from prefopt.modeling import load_model, load_tokenizer
from prefopt.run import configure_logging, finish_run, start_run


@dataclass
class SimPOConfig(CPOConfig):
    """TRL's CPO config with SimPO's loss and the SimPO paper's beta and gamma as defaults."""

    loss_type: str = field(default="simpo", metadata={"help": "Must be 'simpo' for this script."})
    cpo_alpha: float = field(default=0.0, metadata={"help": "Weight of CPO's NLL term; 0 for plain SimPO."})
    beta: float = field(default=2.0, metadata={"help": "Reward scale; the SimPO paper uses 2.0-2.5."})
    simpo_gamma: float = field(default=1.0, metadata={"help": "Target reward margin; the paper uses about 0.5 x beta."})


def main(script_args, training_args, model_args, run_args):
    if training_args.loss_type != "simpo":
        raise UserError(f"simpo.py trains SimPO: loss_type must be 'simpo', got '{training_args.loss_type}'")

    # Tokenizer & data, checked before the model is loaded
    tokenizer = load_tokenizer(model_args, run_args.chat_template_path, training_args.trust_remote_code)
    train_dataset, eval_dataset = load_preference_data(script_args, training_args, run_args, tokenizer)

    # Run: the only one writing to its outputs, resumed from its newest complete checkpoint if asked
    start_run(training_args, run_args)
    checkpoint = resume_checkpoint(training_args)

    # Model
    model = load_model(model_args, training_args.trust_remote_code)

    # Training
    trainer = with_atomic_checkpoints(CPOTrainer)(
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

    # Merge & plot
    del trainer, model
    finish_run(training_args, model_args, run_args)


if __name__ == "__main__":
    configure_logging()
    with exit_on_user_error():
        main(*parse_args(SimPOConfig))
