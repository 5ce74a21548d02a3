"""Loading the tokenizer and the base model to train, the same way for the three algorithms."""

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from trl import ModelConfig, get_quantization_config


def load_tokenizer(model_args: ModelConfig, trust_remote_code: bool = False) -> PreTrainedTokenizerBase:
    tokenizer = AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def torch_dtype(name: str | None) -> torch.dtype | str | None:
    """`ModelConfig.dtype` as `from_pretrained` takes it: "auto", None or a `torch.dtype`."""
    return name if name in (None, "auto") else getattr(torch, name)


def load_model(model_args: ModelConfig, trust_remote_code: bool = False) -> PreTrainedModel:
    """The base model, quantized with bitsandbytes when `load_in_4bit`/`load_in_8bit` asks for QLoRA."""
    quantization_config = get_quantization_config(model_args)
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype=torch_dtype(model_args.dtype),
        attn_implementation=model_args.attn_implementation,
        quantization_config=quantization_config,
        # Quantized weights are placed when loaded, one copy per process; the Trainer moves unquantized ones.
        device_map={"": PartialState().device} if quantization_config else None,
        trust_remote_code=trust_remote_code,
    )
