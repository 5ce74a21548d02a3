"""Sharded training (FSDP, DeepSpeed), checked against the machine and the config before anything loads.

accelerate's launcher tells each process what to shard with in its environment (`ACCELERATE_USE_FSDP`,
`ACCELERATE_USE_DEEPSPEED`, from the accelerate config); a training config can ask for it too (`fsdp`, `deepspeed`).
Without these checks, each combination below ended in a traceback from every process, after the model had loaded.
"""

from accelerate.utils import parse_flag_from_env
from trl import ModelConfig

from prefopt.errors import UserError


def check_sharding(training_args, model_args: ModelConfig) -> None:
    """Refuse, in one line, sharding that cannot run here: FSDP with a LoRA adapter and precomputed reference
    log-probs, and FSDP or DeepSpeed on a process without a GPU."""
    fsdp = parse_flag_from_env("ACCELERATE_USE_FSDP") or bool(training_args.fsdp)
    deepspeed = parse_flag_from_env("ACCELERATE_USE_DEEPSPEED") or bool(training_args.deepspeed)
    # With a LoRA adapter, TRL 1.16's DPO and KTO trainers run the precompute pass in their constructor on the model
    # as loaded, before FSDP has placed (or, with fsdp_cpu_ram_efficient_loading, filled) its weights on each GPU:
    # a device mismatch (TRL issues #6470, #6527). A full fine-tune has a separate reference model that TRL prepares.
    if fsdp and model_args.use_peft and getattr(training_args, "precompute_ref_log_probs", False):
        raise UserError(
            "precompute_ref_log_probs: TRL 1.16 computes the reference log-probs of a LoRA model before FSDP has "
            "placed it on the GPUs, which fails; under FSDP set precompute_ref_log_probs: false (or "
            "--precompute_ref_log_probs false)"
        )
    if (fsdp or deepspeed) and training_args.device.type == "cpu":
        raise UserError(
            f"{'FSDP' if fsdp else 'DeepSpeed'} shards the model over GPUs, and this process has none (a machine "
            "without GPUs, or use_cpu: true); without GPUs launch with accelerate_configs/cpu.yaml, or for several "
            "processes with accelerate_configs/multi_gpu.yaml and use_cpu: true"
        )
