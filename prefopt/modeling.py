"""Checking and loading the tokenizer and the base model to train, the same way for the three algorithms."""

import json
import logging
from pathlib import Path

import torch
from accelerate import PartialState
from transformers import (
    MODEL_FOR_CAUSAL_LM_MAPPING,
    AutoModelForCausalLM,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
)
from transformers.integrations import is_deepspeed_zero3_enabled
from transformers.integrations.fsdp import is_fsdp_enabled
from transformers.models.auto.configuration_auto import CONFIG_MAPPING
from trl import ModelConfig, get_quantization_config

from prefopt.checkpoints import file_problem
from prefopt.errors import UserError, reported_if_hub_unreachable

logger = logging.getLogger(__name__)


def check_base_model(model_dir: str | Path, trust_remote_code: bool = False) -> None:
    """Refuse a local base model that would fail to load: weights cut short or corrupt, or a config.json of an
    architecture that this transformers has no causal language model for. Reads headers and JSON only."""
    model_dir = Path(model_dir)
    for weights in sorted(model_dir.glob("*.safetensors")):
        problem = file_problem(weights)
        if problem:
            raise UserError(f"model_name_or_path: '{weights}' {problem}; download or save the model again")
    config = json.loads((model_dir / "config.json").read_text())
    if trust_remote_code and "AutoModelForCausalLM" in config.get("auto_map", {}):
        return  # the model's own code defines it
    model_type = config.get("model_type")
    if model_type not in CONFIG_MAPPING:
        raise UserError(
            f"model_name_or_path: '{model_dir / 'config.json'}' has model_type {model_type!r}, which this version of "
            "transformers does not know; upgrade transformers, or set trust_remote_code: true if the model ships its "
            "own code"
        )
    if CONFIG_MAPPING[model_type] not in MODEL_FOR_CAUSAL_LM_MAPPING:
        raise UserError(
            f"model_name_or_path: '{model_dir}' is a {model_type} model, which has no causal language model class in "
            "transformers; train a causal (decoder) language model"
        )


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
    # The trainers end every completion with the EOS token.
    if tokenizer.eos_token is None:
        raise UserError(
            f"model_name_or_path: the tokenizer of '{model_args.model_name_or_path}' has no EOS token, which the "
            "trainers end each completion with; set eos_token in its tokenizer_config.json"
        )
    if tokenizer.pad_token is None:
        logger.info("the tokenizer has no pad token: padding with its EOS token %r", tokenizer.eos_token)
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
