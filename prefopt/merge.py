"""The run's final model to `merged_model_dir`, checked before it is published: a LoRA adapter merged into a
full-precision copy of its base model, or a full fine-tune as the trainer saved it.

    python -m prefopt.merge outputs/dpo_v1 --out models/dpo_v1_float32 --merged_dtype float32
    python -m prefopt.merge path/to/adapter --base Qwen/Qwen2.5-0.5B-Instruct --out models/mine --dataset my_pairs.jsonl

The scripts publish after training; the command merges any PEFT adapter, from an earlier run or trained elsewhere, and
writes the same `merge_report.json` and model card. Without --dataset it checks on fixed texts
(`prefopt.merge_check.FIXED_TEXTS`); --base defaults to the base the adapter names.

The check compares logits on a few examples (`prefopt.merge_check`), holding one model at a time. For an adapter:
1. with QLoRA, the 4-bit base with the adapter, as trained: its logits, kept until the reference is known, give the
   gap between what training saw and the merge;
2. the base in its saved dtype (in float32 if `merged_dtype` differs) with the adapter attached by PEFT, unmerged:
   its logits a, in float32, are the reference; with the adapter disabled, the base alone measures the adapter's
   effect;
3. the adapter merged and the weights cast to `merged_dtype`: the merged model d.
For a full fine-tune: the base's logits, kept until the trained model's are known, measure the training's effect;
the trained model, as the trainer saved it in output_dir (gathered, under ZeRO-3 or FSDP), gives the reference a,
and cast to `merged_dtype` it is d. Then d is saved to a staging directory and reloaded exactly as saved: c, whose
distance from a is the report's. Rounding to `merged_dtype` explains the loss when c measures as d did and the saved
model's structure (tensor names, shapes, dtype, tied embeddings, tokenizer) is sound; a float32 save rounds nothing,
so it must match a. Anything else is a failure, and so are NaN or infinite weights: the staging directory is
dropped, and what was trained and any earlier model in `merged_model_dir` stay.
"""

import argparse
import gc
import json
import logging
from dataclasses import dataclass
from pathlib import Path

import torch
from accelerate.utils.memory import clear_device_cache
from peft import PeftConfig, PeftModel
from peft.utils import load_peft_weights
from torch import nn
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase
from transformers.integrations.deepspeed import unset_hf_deepspeed_config
from trl import ModelConfig, ScriptArguments, get_quantization_config

from prefopt.atomic import atomic_directory, remove_leftovers
from prefopt.config import MERGED_DTYPES, RunArguments
from prefopt.data import load_preference_dataset
from prefopt.errors import UserError, exit_on_user_error, reported_if_disk_refuses
from prefopt.locking import lock_outputs
from prefopt.merge_check import (
    ADAPTER_MERGE,
    FULL_FINE_TUNE,
    CheckBatch,
    LogitGap,
    MergedModel,
    Published,
    embeddings_tied,
    example_logits,
    float32_arithmetic,
    non_finite_tensor,
    published_in,
    saved_model_problem,
)
from prefopt.model_card import TrainingRun, write_model_card
from prefopt.modeling import load_model
from prefopt.run import configure_logging

REPORT_FILE = "merge_report.json"
MIN_SHARE_KEPT = 0.99  # below it, a half-precision save warns and names merged_dtype: float32

logger = logging.getLogger("prefopt.merge")  # also when run as `python -m prefopt.merge`


@dataclass
class Candidate:
    """The model to publish, in memory in its final dtype, and what its check compares it with."""

    model: PreTrainedModel | None  # dropped once saved, before the saved copy loads
    reference: list[torch.Tensor]  # the logits it must reproduce, in float32
    effect: LogitGap  # the base's logits against the reference: what training changed
    base_dtype: torch.dtype
    shapes: dict[str, tuple[int, ...]]  # the tensors it must have
    tied: bool  # whether its word embeddings stay one weight
    fields: dict  # the report's own entries for an adapter merge or a full fine-tune


def publish_model(
    trained_dir: str | Path,
    merged_dir: str | Path,
    model_args: ModelConfig,
    check_batch: CheckBatch = CheckBatch(),
    merged_dtype: str | None = None,
    trust_remote_code: bool = False,
    training: TrainingRun | None = None,
) -> dict:
    """Save the model a run trained in `trained_dir` to `merged_dir` as one plain transformers model, with the
    trained tokenizer, a report of its check (`merge_report.json`) and a model card, once the check (module
    docstring) has passed; return the report.

    With `model_args.use_peft`, the LoRA adapter is merged into the base, reloaded unquantized even after QLoRA:
    merging into 4-bit weights would round the update away. Otherwise `trained_dir` holds a full fine-tune, saved as
    trained. `merged_dtype` (float32, bfloat16, float16) defaults to the base's saved dtype. `merged_dir` appears
    only once complete and checked; a failed check, a full disk or an unwritable directory raises `UserError`, and a
    previous model there survives any failure. The caller holds `merged_dir`'s lock (`lock_outputs`): leftovers of
    killed runs beside it are removed.
    """
    trained_dir, merged_dir = Path(trained_dir), Path(merged_dir)
    # By the run's settings, never by the files: output_dir may still hold an earlier run's adapter.
    published = ADAPTER_MERGE if model_args.use_peft else FULL_FINE_TUNE
    clear_device_cache(garbage_collection=True)  # what the trainer held, once its objects are deleted
    # After a ZeRO-3 run from_pretrained would still shard the base over the processes, which wait for this one.
    unset_hf_deepspeed_config()
    tokenizer = trained_tokenizer(trained_dir, model_args, trust_remote_code)
    token_ids = check_batch.token_ids(tokenizer)
    prepare = merged_adapter if model_args.use_peft else full_fine_tune
    candidate = prepare(trained_dir, merged_dir, model_args, token_ids, merged_dtype, trust_remote_code)
    dtype = candidate.model.dtype
    problem = non_finite_tensor(candidate.model.named_parameters())
    if problem:
        if dtype == torch.float16:
            problem += " (float16 holds at most 65504: set merged_dtype: bfloat16 or float32)"
        raise check_failed(published, trained_dir, merged_dir, f"in {dtype_name(dtype)}, {problem}")
    with float32_arithmetic(candidate.model):
        rounded = LogitGap.measure(candidate.model, token_ids, candidate.reference)
    largest_logit = max(logits.abs().max().item() for logits in candidate.reference)
    expected = MergedModel(
        candidate.shapes, dtype, candidate.tied, token_ids, rounded, largest_logit, published.reference
    )
    num_parameters = sum(parameter.numel() for parameter in candidate.model.parameters())

    for leftover in remove_leftovers(merged_dir):
        logger.info("removed %s, left by a run killed while saving to %s", leftover, merged_dir)
    needed = format_size(dtype.itemsize * num_parameters)
    saving = reported_if_disk_refuses("the model", merged_dir, needed, kept(published, trained_dir, merged_dir))
    with saving, atomic_directory(merged_dir) as staging:
        candidate.model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        candidate.model = None
        gc.collect()

        # The model exactly as saved
        saved = AutoModelForCausalLM.from_pretrained(
            staging, dtype="auto", trust_remote_code=trust_remote_code, use_safetensors=True
        )
        with float32_arithmetic(saved):
            gap = LogitGap.measure(saved, token_ids, candidate.reference)
        saved_token_ids = check_batch.token_ids(
            AutoTokenizer.from_pretrained(staging, trust_remote_code=trust_remote_code)
        )
        problem = saved_model_problem(saved, saved_token_ids, gap, expected)
        del saved
        if problem is not None:
            raise check_failed(published, trained_dir, merged_dir, problem)

        share = gap.share_kept(candidate.effect)
        report = {
            published.key: str(trained_dir),
            "base_model": model_args.model_name_or_path,
            "check_batch": {"source": check_batch.describe(), "examples": len(token_ids), "positions": gap.positions},
            "base_dtype": dtype_name(candidate.base_dtype),
            "merged_dtype": dtype_name(dtype),
            "word_embeddings": "tied" if candidate.tied else "untied",
            "max_abs_logit_diff": gap.max_abs,
            "mean_kl": gap.mean_kl,
            "share_kept": share,
            published.effect_key: candidate.effect.max_abs,
            **candidate.fields,
            "warning": rounding_warning(published, share, dtype, gap, candidate.effect, num_parameters),
        }
        (staging / REPORT_FILE).write_text(json.dumps(report, indent=1) + "\n")
        write_model_card(staging, merged_dir.name, report, training, check_batch.dataset)
    source = (
        f"merged {trained_dir} into {model_args.model_name_or_path}" if model_args.use_peft else f"saved {trained_dir}"
    )
    logger.info("%s -> %s", source, merged_dir)
    logger.info(report_line(report))
    if report["warning"]:
        logger.warning("%s: %s", published.check, report["warning"])
    return report


def merged_adapter(
    adapter_dir: Path,
    merged_dir: Path,
    model_args: ModelConfig,
    token_ids: list[list[int]],
    merged_dtype: str | None,
    trust_remote_code: bool,
) -> Candidate:
    """The adapter merged into its base, in `merged_dtype`, with the logits of base + adapter, unmerged."""
    problem = non_finite_tensor(load_peft_weights(str(adapter_dir), device="cpu").items())
    if problem:
        raise check_failed(ADAPTER_MERGE, adapter_dir, merged_dir, f"the adapter's {problem}: {DIVERGED}")

    # 1. QLoRA: the 4-bit base + adapter that training saw
    qlora_logits = None
    if get_quantization_config(model_args) is not None:
        trained = PeftModel.from_pretrained(load_model(model_args, trust_remote_code), adapter_dir)
        qlora_logits = list(example_logits(trained, token_ids))
        del trained
        clear_device_cache(garbage_collection=True)

    # 2. Base + adapter, unmerged: the reference logits; the base alone: the adapter's effect
    base = load_base(model_args, trust_remote_code)
    base_dtype = base.dtype
    dtype = getattr(torch, merged_dtype) if merged_dtype else base_dtype
    if dtype != base_dtype:  # merged in float32, then rounded once
        cast_parameters(base, torch.float32)
    shapes = {name: tuple(tensor.shape) for name, tensor in base.state_dict().items()}
    embeddings = tied_embeddings(base)
    model = PeftModel.from_pretrained(base, adapter_dir)
    with float32_arithmetic(model):
        reference = list(example_logits(model, token_ids))
        with model.disable_adapter():
            effect = LogitGap.measure(model, token_ids, reference)
    qlora_gap = LogitGap.between(qlora_logits, reference).summary() if qlora_logits else None

    # 3. Merged, rounded into the merged dtype
    tied = prepare_tied_embeddings(model, embeddings)
    merged = model.merge_and_unload()
    cast_parameters(merged, dtype)
    return Candidate(merged, reference, effect, base_dtype, shapes, tied, {"qlora_gap": qlora_gap})


def full_fine_tune(
    trained_dir: Path,
    merged_dir: Path,
    model_args: ModelConfig,
    token_ids: list[list[int]],
    merged_dtype: str | None,
    trust_remote_code: bool,
) -> Candidate:
    """The fully fine-tuned model the trainer saved, in `merged_dtype`, with its logits as saved."""
    # The base's logits are kept (one more set, as large as the reference) until the trained model's are known.
    base = load_base(model_args, trust_remote_code)
    base_dtype = base.dtype
    with float32_arithmetic(base):
        base_logits = list(example_logits(base, token_ids))
    del base
    gc.collect()

    trained = AutoModelForCausalLM.from_pretrained(
        trained_dir, dtype="auto", trust_remote_code=trust_remote_code, use_safetensors=True
    )
    problem = non_finite_tensor(trained.named_parameters())
    if problem:
        raise check_failed(FULL_FINE_TUNE, trained_dir, merged_dir, f"the trained model's {problem}: {DIVERGED}")
    with float32_arithmetic(trained):
        reference = list(example_logits(trained, token_ids))
    effect = LogitGap.between(base_logits, reference)
    trained_dtype = trained.dtype
    shapes = {name: tuple(tensor.shape) for name, tensor in trained.state_dict().items()}
    cast_parameters(trained, getattr(torch, merged_dtype) if merged_dtype else base_dtype)
    fields = {"trained_dtype": dtype_name(trained_dtype)}
    return Candidate(trained, reference, effect, base_dtype, shapes, embeddings_tied(trained), fields)


DIVERGED = "training diverged; train again with a lower learning_rate"


def check_failed(published: Published, trained_dir: Path, merged_dir: Path, problem: str) -> UserError:
    """The one line of a failed check: what failed, and that nothing trained or published before is lost."""
    return UserError(f"{published.check} failed: {problem}; {kept(published, trained_dir, merged_dir)}")


def kept(published: Published, trained_dir: Path, merged_dir: Path) -> str:
    """What a failure leaves: what was trained, and `merged_dir` as it was."""
    left = "is left as it was" if merged_dir.exists() else "was not written"
    return f"{published.trained} in {trained_dir} is kept, {merged_dir} {left}"


def load_base(model_args: ModelConfig, trust_remote_code: bool) -> PreTrainedModel:
    """The base model unquantized, in its saved dtype."""
    return AutoModelForCausalLM.from_pretrained(
        model_args.model_name_or_path,
        revision=model_args.model_revision,
        dtype="auto",
        trust_remote_code=trust_remote_code,
        use_safetensors=True,
    )


def trained_tokenizer(
    trained_dir: Path, model_args: ModelConfig, trust_remote_code: bool = False
) -> PreTrainedTokenizerBase:
    """The tokenizer saved with the trained model or adapter (the one training used, chat template included), else
    the base's."""
    if (trained_dir / "tokenizer_config.json").is_file():
        return AutoTokenizer.from_pretrained(trained_dir, trust_remote_code=trust_remote_code)
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
    published: Published, share: float | None, dtype: torch.dtype, gap: LogitGap, effect: LogitGap, num_parameters: int
) -> str | None:
    """The warning of a half-precision save that rounded away more than 1 - MIN_SHARE_KEPT of training's effect."""
    if dtype == torch.float32 or share is None or share >= MIN_SHARE_KEPT:
        return None
    # Below 0 the rounding moved the logits further from the reference than the base is.
    kept = f"{share:.1%}" if share > 0 else "none"
    return (
        f"saving in {dtype_name(dtype)} kept {kept} of {published.effect} on the logits (max |logit diff| "
        f"{gap.max_abs:.3g} from {published.reference}, against an effect of {effect.max_abs:.3g}); merged_dtype: "
        f"float32 keeps all of it, at {format_size(4 * num_parameters)} instead of "
        f"{format_size(dtype.itemsize * num_parameters)}"
    )


def format_size(num_bytes: int) -> str:
    return f"{num_bytes / 1e9:.2f} GB" if num_bytes >= 1e8 else f"{num_bytes / 1e6:.2f} MB"


def report_line(report: dict) -> str:
    """The check's report as one log line."""
    published = published_in(report)
    share = "n/a (training changed nothing)" if report["share_kept"] is None else f"{report['share_kept']:.1%}"
    check = report["check_batch"]
    line = (
        f"{published.check} ({report['merged_dtype']}, {check['examples']} examples of {check['source']}): max |logit "
        f"diff| {report['max_abs_logit_diff']:.3g}, mean KL {report['mean_kl']:.3g}, share of {published.effect} "
        f"kept {share}"
    )
    if report.get("qlora_gap"):
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
    model_args = ModelConfig(model_name_or_path=base, use_peft=True)
    publish_model(args.adapter_dir, args.out, model_args, check_batch, args.merged_dtype)


if __name__ == "__main__":
    configure_logging()
    with exit_on_user_error():
        main()
