"""Merging the trained LoRA adapter into a full-precision copy of its base model."""

import logging
from pathlib import Path

from peft import PeftModel
from transformers import AutoModelForCausalLM, AutoTokenizer
from transformers.integrations.deepspeed import unset_hf_deepspeed_config
from trl import ModelConfig

from prefopt.atomic import atomic_directory
from prefopt.modeling import torch_dtype

logger = logging.getLogger(__name__)


def merge_adapter(
    adapter_dir: str | Path, merged_dir: str | Path, model_args: ModelConfig, trust_remote_code: bool = False
) -> Path:
    """Save base model + adapter as one plain transformers model, with the tokenizer used in training.

    The base is always reloaded unquantized, in `model_args.dtype`: merging into 4-bit weights would round the
    adapter's update away. `merged_dir` appears only once complete; a previous model there survives any failure.
    """
    adapter_dir = Path(adapter_dir)
    # After a ZeRO-3 run from_pretrained would still shard the base over the processes, which wait for this one.
    unset_hf_deepspeed_config()
    base = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=torch_dtype(model_args.dtype),
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    merged = PeftModel.from_pretrained(base, adapter_dir).merge_and_unload()
    tokenizer = AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    with atomic_directory(merged_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
    logger.info("merged %s into %s -> %s", adapter_dir, model_args.model_name_or_path, merged_dir)
    return Path(merged_dir)
