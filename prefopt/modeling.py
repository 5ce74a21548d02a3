"""Loading the tokenizer and the base model to train, the same way for the three algorithms."""

from pathlib import Path

import torch
from accelerate import PartialState
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.integrations.fsdp import is_fsdp_enabled
from trl import ModelConfig, get_quantization_config

from prefopt.errors import UserError, reported_if_hub_unreachable


def load_tokenizer(
    model_args: ModelConfig, chat_template_path: str | None = None, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The model's tokenizer, with the chat template of `chat_template_path` when one is given."""
    with reported_if_hub_unreachable("model_name_or_path", model_args.model_name_or_path):
        tokenizer = AutoTokenizer.from_pretrained(
            model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
        )
    if chat_template_path:
        tokenizer.chat_template = read_chat_template(chat_template_path)
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def read_chat_template(path: str) -> str:
    """A Jinja template from a .jinja/.j2 file, or the template of the tokenizer saved in a directory."""
    if Path(path).is_file() and Path(path).suffix in (".jinja", ".j2"):
        return Path(path).read_text()
    if Path(path).is_dir():
        template = AutoTokenizer.from_pretrained(path).chat_template
        if template:
            return template
    raise UserError(f"chat_template_path: '{path}' is neither a .jinja/.j2 file nor a tokenizer with a chat template")


def torch_dtype(name: str | None) -> torch.dtype | str | None:
    """`ModelConfig.dtype` as `from_pretrained` takes it: "auto", None or a `torch.dtype`."""
    return name if name in (None, "auto") else getattr(torch, name)


def load_model(model_args: ModelConfig, trust_remote_code: bool = False) -> PreTrainedModel:
    """The base model, quantized with bitsandbytes when `load_in_4bit`/`load_in_8bit` asks for QLoRA."""
    quantization_config = get_quantization_config(model_args)
    # Quantized weights are placed when loaded, one copy per process; the Trainer moves unquantized ones. ZeRO-3 and
    # FSDP shard them instead, and from_pretrained refuses a device_map under ZeRO-3.
    place_quantized = quantization_config is not None and not (is_deepspeed_zero3_enabled() or is_fsdp_enabled())
    with reported_if_hub_unreachable("model_name_or_path", model_args.model_name_or_path):
        return AutoModelForCausalLM.from_pretrained(
            model_args.model_name_or_path,
            revision=model_args.model_revision,
            dtype=torch_dtype(model_args.dtype),
            attn_implementation=model_args.attn_implementation,
            quantization_config=quantization_config,
            device_map={"": PartialState().device} if place_quantized else None,
            trust_remote_code=trust_remote_code,
            use_safetensors=True,  # never unpickle weights
        )
