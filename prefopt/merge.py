"""Merging a LoRA adapter into a full-precision copy of its base model, checked before the merged model is published.

    python -m prefopt.merge outputs/dpo_v1 --out models/dpo_v1_float32 --merged_dtype float32
    python -m prefopt.merge path/to/adapter --base Qwen/Qwen2.5-0.5B-Instruct --out models/mine --dataset my_pairs.jsonl

The scripts merge after training; the command merges any PEFT adapter, from an earlier run or trained elsewhere, and
writes the same `merge_report.json` and model card. Without --dataset it checks on fixed texts
(`prefopt.merge_check.FIXED_TEXTS`); --base defaults to the base the adapter names.

The check compares logits on a few examples (`prefopt.merge_check`), holding one model at a time:
1. the base in its saved dtype (in float32 if `merged_dtype` differs) with the adapter attached by PEFT, unmerged:
   its logits a, in float32, are the reference and the only logits kept; with the adapter disabled, the base alone
   measures the adapter's effect;
2. the adapter merged and the weights cast to `merged_dtype`, saved to a staging directory: the merged model d;
3. with QLoRA, the 4-bit base with the adapter, as trained: the gap between what training saw and the merge;
4. the merged model reloaded from staging, exactly as saved: c, whose distance from a is the report's.
Rounding to `merged_dtype` explains the loss when c measures as d did and the saved model's structure (tensor names,
shapes, dtype, tied embeddings, tokenizer) is sound; a float32 merge rounds nothing, so it must match a. Anything
else is a failure: the staging directory is dropped, and the adapter and any earlier merged model stay.
"""

import argparse
import gc
import json
import logging
from pathlib import Path

import torch
from accelerate.utils.memory import clear_device_cache
from peft import PeftConfig, PeftModel
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.deepspeed import unset_hf_deepspeed_config
from trl import ModelConfig, ScriptArguments, get_quantization_config

from prefopt.atomic import atomic_directory
from prefopt.config import MERGED_DTYPES, RunArguments
from prefopt.data import load_preference_dataset
from prefopt.errors import UserError, exit_on_user_error
from prefopt.locking import lock_outputs
from prefopt.merge_check import (
    CheckBatch,
    LogitGap,
    MergedModel,
    embeddings_tied,
    example_logits,
    float32_arithmetic,
    saved_model_problem,
)
from prefopt.model_card import TrainingRun, write_model_card
from prefopt.modeling import load_model
from prefopt.run import configure_logging

REPORT_FILE = "merge_report.json"
MIN_SHARE_KEPT = 0.99  # below it, a half-precision merge warns and names merged_dtype: float32

logger = logging.getLogger("prefopt.merge")  # also when run as `python -m prefopt.merge`


def merge_adapter(
    adapter_dir: str | Path,
    merged_dir: str | Path,
    model_args: ModelConfig,
    check_batch: CheckBatch = CheckBatch(),
    merged_dtype: str | None = None,
    trust_remote_code: bool = False,
    training: TrainingRun | None = None,
) -> dict:
    """Save base model + adapter as one plain transformers model, with the adapter's tokenizer, a merge report and a
    model card, once the check (module docstring) has passed; return the report.

    The base is reloaded unquantized even after QLoRA: merging into 4-bit weights would round the update away.
    `merged_dtype` (float32, bfloat16, float16) defaults to the base's saved dtype. `merged_dir` appears only once
    complete and checked; a failed check raises `UserError`, and a previous model there survives any failure.
    """
    adapter_dir, merged_dir = Path(adapter_dir), Path(merged_dir)
    clear_device_cache(garbage_collection=True)  # what the trainer held, once its objects are deleted
    # After a ZeRO-3 run from_pretrained would still shard the base over the processes, which wait for this one.
    unset_hf_deepspeed_config()
    tokenizer = adapter_tokenizer(adapter_dir, model_args, trust_remote_code)
    token_ids = check_batch.token_ids(tokenizer)

    # 1. Base + adapter, unmerged: the reference logits; the base alone: the adapter's effect
    base = AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype="auto",
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )
    base_dtype = base.dtype
    dtype = getattr(torch, merged_dtype) if merged_dtype else base_dtype
    if dtype != base_dtype:  # merged in float32, then rounded once
        cast_parameters(base, torch.float32)
    base_shapes = {name: tuple(tensor.shape) for name, tensor in base.state_dict().items()}
    embeddings = tied_embeddings(base)
    model = PeftModel.from_pretrained(base, adapter_dir)
    with float32_arithmetic(model):
        reference = list(example_logits(model, token_ids))
        with model.disable_adapter():
            effect = LogitGap.measure(model, token_ids, reference)

    # 2. Merged, rounded into the merged dtype, saved to staging
    tied = prepare_tied_embeddings(model, embeddings)
    merged = model.merge_and_unload()
    cast_parameters(merged, dtype)
    num_parameters = sum(parameter.numel() for parameter in merged.parameters())
    with atomic_directory(merged_dir) as staging:
        merged.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        with float32_arithmetic(merged):
            rounded = LogitGap.measure(merged, token_ids, reference)
        largest_logit = max(logits.abs().max().item() for logits in reference)
        expected = MergedModel(base_shapes, dtype, tied, token_ids, rounded, largest_logit)
        del base, model, merged, embeddings
        gc.collect()

        # 3. QLoRA: the 4-bit base + adapter that training saw
        qlora_gap = None
        if get_quantization_config(model_args) is not None:
            trained = PeftModel.from_pretrained(load_model(model_args, trust_remote_code), adapter_dir)
            qlora_gap = LogitGap.measure(trained, token_ids, reference)
            del trained
            clear_device_cache(garbage_collection=True)

        # 4. The merged model exactly as saved
        saved = AutoModelForCausalLM.from_pretrained(
            staging, dtype="auto", trust_remote_code=trust_remote_code, use_safetensors=True
        )
        with float32_arithmetic(saved):
            gap = LogitGap.measure(saved, token_ids, reference)
        saved_token_ids = check_batch.token_ids(
            AutoTokenizer.from_pretrained(staging, trust_remote_code=trust_remote_code)
        )
        problem = saved_model_problem(saved, saved_token_ids, gap, expected)
        del saved
        if problem is not None:
            kept = "is left as it was" if merged_dir.exists() else "was not written"
            raise UserError(f"merge check failed: {problem}; the adapter in {adapter_dir} is kept, {merged_dir} {kept}")

        share = gap.share_kept(effect)
        report = {
            "adapter": str(adapter_dir),
            "base_model": model_args.model_name_or_path,
            "check_batch": {"source": check_batch.describe(), "examples": len(token_ids), "positions": gap.positions},
            "base_dtype": dtype_name(base_dtype),
            "merged_dtype": dtype_name(dtype),
            "word_embeddings": "tied" if tied else "untied",
            "max_abs_logit_diff": gap.max_abs,
            "mean_kl": gap.mean_kl,
            "share_kept": share,
            "adapter_effect_max_abs_logit_diff": effect.max_abs,
            "qlora_gap": qlora_gap.summary() if qlora_gap else None,
            "warning": rounding_warning(share, dtype, gap, effect, num_parameters),
        }
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
        write_model_card(staging, merged_dir.name, report, training, check_batch.dataset)
    logger.info("merged %s into %s -> %s", adapter_dir, model_args.model_name_or_path, merged_dir)
    logger.info(report_line(report))
    if report["warning"]:
        logger.warning("merge check: %s", report["warning"])
    return report


def adapter_tokenizer(
    adapter_dir: Path, model_args: ModelConfig, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the adapter (the one training used, chat template included), else the base's."""
    if (adapter_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(adapter_dir, trust_remote_code=trust_remote_code)
    return AutoTokenizer.from_pretrained(
        model_args.model_name_or_path, revision=model_args.model_revision, trust_remote_code=trust_remote_code
    )


def tied_embeddings(model: PreTrainedModel) -> list[tuple[str, nn.Module]]:
    """The input and the output embeddings, as (name, module), if they share one weight; else []."""
    if not embeddings_tied(model):
        return []
    names = {id(module): name for name, module in model.named_modules()}
    return [(names[id(module)], module) for module in (model.get_input_embeddings(), model.get_output_embeddings())]


def prepare_tied_embeddings(model: PeftModel, embeddings: list[tuple[str, nn.Module]]) -> bool:
    """Make the merge of an adapter that wraps tied word embeddings right; return whether they stay tied.

    `embeddings` are the base's tied embeddings, from before the adapter was attached. PEFT merges an update into
    its weight in place, and tied embeddings share theirs: merging a LoRA of lm_head or embed_tokens alone would
    change both and keep them tied, wrong by 7 to 250 in the logits of a tied Llama. A new Parameter on the output
    side keeps each update on its own side. An adapter trained with ensure_weight_tying updates both sides with one
    update, which merging both would add twice: its output side is dropped unmerged, and the pair stays tied.
    """
    if not embeddings:
        return False
    base = model.get_base_model()
    if all(base.get_submodule(name) is module for name, module in embeddings):
        return True  # the adapter leaves both alone, as all-linear does
    (_, input_embeddings), (output_name, _) = embeddings
    if getattr(model.active_peft_config, "ensure_weight_tying", False):
        base.set_submodule(output_name, base.get_submodule(output_name).get_base_layer())
        return True
    shared = input_embeddings.weight
    untied = nn.Parameter(shared.detach().clone(), requires_grad=False)
    for module in base.get_submodule(output_name).modules():
        for name, parameter in list(module.named_parameters(recurse=False)):
            if parameter is shared:
                setattr(module, name, untied)
    # save_pretrained then writes both weights, and from_pretrained leaves them apart.
    base.config.tie_word_embeddings = base.config.get_text_config().tie_word_embeddings = False
    for module in base.modules():
        if hasattr(module, "all_tied_weights_keys"):  # what transformers re-ties
            module.all_tied_weights_keys = {}
    return False


def cast_parameters(model: nn.Module, dtype: torch.dtype) -> None:
    """Cast the parameters one by one (never a second copy of the model); buffers such as RoPE's keep float32."""
    for parameter in model.parameters():
        parameter.data = parameter.data.to(dtype)


def dtype_name(dtype: torch.dtype) -> str:
    return str(dtype).removeprefix("torch.")


def rounding_warning(
    share: float | None, dtype: torch.dtype, gap: LogitGap, effect: LogitGap, num_parameters: int
) -> str | None:
    """The warning of a half-precision merge that rounded away more than 1 - MIN_SHARE_KEPT of the adapter's effect."""
    if dtype == torch.float32 or share is None or share >= MIN_SHARE_KEPT:
        return None
    return (
        f"saving in {dtype_name(dtype)} kept {share:.1%} of the adapter's effect on the logits (max |logit diff| "
        f"{gap.max_abs:.3g} from base + adapter, whose own effect is {effect.max_abs:.3g}); merged_dtype: float32 "
        f"keeps all of it, at {format_size(4 * num_parameters)} instead of {format_size(dtype.itemsize * num_parameters)}"
    )


def format_size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.2f} MB"


def report_line(report: dict) -> str:
    """The merge report as one log line."""
    share = "n/a (the adapter changes nothing)" if report["share_kept"] is None else f"{report['share_kept']:.1%}"
    check = report["check_batch"]
    line = (
        f"merge check ({report['merged_dtype']}, {check['examples']} examples of {check['source']}): max |logit diff| "
        f"{report['max_abs_logit_diff']:.3g}, mean KL {report['mean_kl']:.3g}, share of the adapter's effect kept "
        f"{share}"
    )
    if report["qlora_gap"]:
        gap = report["qlora_gap"]
        line += (
            f"; QLoRA gap (4-bit base + adapter, as trained): max |logit diff| {gap['max_abs_logit_diff']:.3g}, "
            f"mean KL {gap['mean_kl']:.3g}"
        )
    return line


def check_batch_of(dataset_name: str) -> CheckBatch:
    """The check batch from preference data, read and converted to TRL's format as the scripts read it: its test
    split, else its train split."""
    dataset = load_preference_dataset(ScriptArguments(dataset_name=dataset_name), RunArguments())
    split = "test" if "test" in dataset else "train"
    if split not in dataset:
        raise UserError(
            f"--dataset: '{dataset_name}' has neither a test nor a train split (splits: {', '.join(dataset)})"
        )
    return CheckBatch.from_dataset(dataset[split], dataset_name, split)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m prefopt.merge", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("adapter_dir", type=Path, help="a PEFT adapter directory (adapter_config.json)")
    parser.add_argument("--base", help="the base model, a directory or hub id (default: the adapter's own base)")
    parser.add_argument("--out", type=Path, required=True, help="where the merged model goes")
    parser.add_argument(
        "--merged_dtype", choices=MERGED_DTYPES, help="the merged weights' dtype (default: the base's saved dtype)"
    )
    parser.add_argument(
        "--dataset", help="preference data to check on: a hub id, directory or file (default: fixed texts)"
    )
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    args = parser.parse_args(argv)
    if not (args.adapter_dir / "adapter_config.json").is_file():
        raise UserError(f"{args.adapter_dir}: no adapter_config.json; give the directory of a PEFT adapter")
    base = args.base or PeftConfig.from_pretrained(args.adapter_dir).base_model_name_or_path
    if not base:
        raise UserError(f"{args.adapter_dir}: the adapter does not name its base model; pass --base")
    if args.out.exists() and not args.overwrite:
        raise UserError(f"--out '{args.out}' already exists; pass --overwrite to replace it, or choose another --out")
    check_batch = check_batch_of(args.dataset) if args.dataset else CheckBatch()
    lock_outputs(args.out)
    merge_adapter(args.adapter_dir, args.out, ModelConfig(model_name_or_path=base), check_batch, args.merged_dtype)


if __name__ == "__main__":
    configure_logging()
    with exit_on_user_error():
        main()
