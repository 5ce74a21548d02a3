"""Simple Preference Optimization (SimPO) of a LoRA adapter, merged into its base model at the end.

    python simpo.py --config training_configs/simpo_v1.yaml
    accelerate launch --config_file accelerate_configs/multi_gpu.yaml simpo.py --config training_configs/simpo_v1.yaml
    python simpo.py --config training_configs/simpo_v1.yaml --beta 2.5 --simpo_gamma 1.375

Keys are the fields of TRL's `ScriptArguments`, `CPOConfig` and `ModelConfig`, plus `prefopt.config.RunArguments`.
SimPO is TRL's CPO trainer with `loss_type: simpo` and `cpo_alpha: 0`. It needs no reference model: its reward is
the length-normalised log-probability scaled by `beta`, and `simpo_gamma` is the paper's target margin (in reward
units, like the paper's gamma). The paper's values are beta 2.0-2.5 and gamma/beta about 0.5; with CPO's default
beta 0.1 the scaled reward differences are too small to overcome the margin and the loss barely moves.
`use_fused_lm_head: true` computes the log-probabilities without CPO's full logits, as DPO and KTO do.
"""

from dataclasses import dataclass, field

import torch
from accelerate import PartialState
from accelerate.utils import is_peft_model
from trl import get_peft_config
from trl.experimental.cpo import CPOConfig, CPOTrainer
from trl.trainer.utils import add_fused_lm_head

from prefopt.checkpoints import resume_checkpoint, with_atomic_checkpoints
from prefopt.config import parse_args
from prefopt.data import load_preference_data
from prefopt.errors import UserError, exit_on_user_error
from prefopt.merge import publish_model
from prefopt.merge_check import CheckBatch
from prefopt.model_card import TrainingRun
from prefopt.modeling import load_model, load_tokenizer
from prefopt.plotting import plot_losses
from prefopt.run import configure_logging, save_resource_usage, start_run
from prefopt.stopping import with_safe_stops


@dataclass
class SimPOConfig(CPOConfig):
    """TRL's CPO config with SimPO's loss and the SimPO paper's beta and gamma as defaults."""

    loss_type: str = field(default="simpo", metadata={"help": "Must be 'simpo' for this script."})
    cpo_alpha: float = field(default=0.0, metadata={"help": "Weight of CPO's NLL term; 0 for plain SimPO."})
    beta: float = field(default=2.0, metadata={"help": "Reward scale; the SimPO paper uses 2.0-2.5."})
    simpo_gamma: float = field(default=1.0, metadata={"help": "Target reward margin; the paper uses about 0.5 x beta."})
    use_fused_lm_head: bool = field(
        default=False,
        metadata={
            "help": "Compute the log-probabilities with TRL's fused LM head, in chunks, as DPO and KTO do, instead of "
            "CPO's whole (2 x batch, length, vocab) logits: the same loss and gradients in less memory. logits/chosen "
            "and logits/rejected then average over completion tokens only. Not with a LoRA adapter on lm_head."
        },
    )


class SimPOTrainer(CPOTrainer):
    """TRL's CPO trainer; with `use_fused_lm_head`, its log-probabilities come from TRL's fused LM head."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if self.args.use_fused_lm_head:
            # As DPOTrainer does: the head is patched into the model under the adapter, which PEFT calls through.
            model = self.model.get_base_model() if is_peft_model(self.model) else self.model
            add_fused_lm_head(model, outputs=("log_probs", "mean_logits"))

    def concatenated_forward(self, model, batch):
        """CPO's forward, with per-token log-probabilities computed in vocabulary tiles and never as whole logits.

        Returns what CPO's own returns, in its order; in place of the logits, their mean over completion tokens.
        """
        if not self.args.use_fused_lm_head:
            return super().concatenated_forward(model, batch)
        inputs = self.concatenated_inputs(batch, padding_value=self.pad_token_id, device=self.accelerator.device)
        num_chosen = batch["chosen_labels"].shape[0]
        outputs = model(
            inputs["concatenated_input_ids"],
            attention_mask=inputs["concatenated_attention_mask"],
            labels=inputs["concatenated_labels"],
            fused_lm_head=True,
            use_cache=False,
            **({"output_router_logits": True} if self.aux_loss_enabled else {}),
        )
        log_probs, mask = outputs.log_probs, outputs.label_mask  # shifted: position t scores token t + 1
        logps = log_probs.sum(-1)
        if self.loss_type in ("ipo", "simpo"):  # CPO's average_log_prob
            logps = logps / mask.sum(-1)
        if self.cpo_alpha == 0:
            nll_loss = torch.tensor(0.0, device=self.accelerator.device)
        else:  # CPO's cross-entropy over the chosen completions' tokens
            nll_loss = -log_probs[:num_chosen].sum() / mask[:num_chosen].sum()
        chosen_logits = outputs.mean_logits[:num_chosen][mask[:num_chosen]].mean()
        rejected_logits = outputs.mean_logits[num_chosen:][mask[num_chosen:]].mean()
        result = (logps[:num_chosen], logps[num_chosen:], chosen_logits, rejected_logits, nll_loss)
        return (*result, outputs.aux_loss) if self.aux_loss_enabled else result


def main(script_args, training_args, model_args, run_args):
    if training_args.loss_type != "simpo":
        raise UserError(f"simpo.py trains SimPO: loss_type must be 'simpo', got '{training_args.loss_type}'")
    if training_args.use_fused_lm_head and "lm_head" in (model_args.lora_target_modules or []):
        raise UserError(
            "use_fused_lm_head reads lm_head's weight directly, so a LoRA adapter on it would never train: remove "
            "lm_head from lora_target_modules, or set use_fused_lm_head: false"
        )

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
    trainer = with_safe_stops(with_atomic_checkpoints(SimPOTrainer))(
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
        main(*parse_args(SimPOConfig))
