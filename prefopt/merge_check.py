"""The check of a published model: its logits against those of the model it must reproduce, the reference (the base
with the adapter applied, unmerged, or a full fine-tune as the trainer saved it).

The check runs on a few examples (`CheckBatch`): the run's own data as the trainer sees it, or fixed texts. Logits
are always computed in float32 arithmetic, whatever the weights' dtype (`float32_arithmetic`), so that differences
measure the weights and not the rounding of half-precision matrix products. The reference logits are kept; every
other model's logits are reduced, example by example, to a `LogitGap` against them.
"""

import contextlib
import functools
import math
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from datasets import Dataset
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase
from trl import ScriptArguments
from trl.data_utils import is_conversational, maybe_extract_prompt

from prefopt.config import RunArguments
from prefopt.data import data_description

# The check batch: its float32 logits, kept once, take CHECK_EXAMPLES x CHECK_MAX_TOKENS x vocabulary x 4 bytes
# (0.29 GiB for Qwen2.5's 151,936 tokens, 0.25 GiB for Llama 3's 128,256).
CHECK_EXAMPLES = 8
CHECK_MAX_TOKENS = 64

# Checked when no data is given (`python -m prefopt.merge` without --dataset): prose, a dialogue, code, numbers and
# two languages, so that most of a general tokenizer's kinds of tokens occur.
FIXED_TEXTS = (
    "I watched this film last night, and it was one of the best I have seen in years.",
    "Question: What is the capital of France?\nAnswer: Paris is the capital and largest city of France.",
    "def fibonacci(n):\n    return n if n < 2 else fibonacci(n - 1) + fibonacci(n - 2)\n",
    "The meeting moved to 12 March 2025 at 14:30; bring the report and 3 copies of the budget (about $4,200).",
    "Photosynthesis converts light energy into chemical energy, which plants store as glucose.",
    "User: Can you recommend a good book about history?\nAssistant: Try 'SPQR' by Mary Beard, a history of Rome.",
    "Dear team, thank you for your hard work this quarter. Let us keep it up!",
    "Translate to German: Good morning, how are you? -> Guten Morgen, wie geht es dir?",
)


@dataclass(frozen=True)
class CheckBatch:
    """The examples a merge is checked on: rows of preference data (TRL's columns) or plain texts, and their source."""

    examples: tuple[dict | str, ...] = FIXED_TEXTS
    dataset: str | None = None
    split: str | None = None

    @classmethod
    def from_dataset(cls, dataset: Dataset, name: str, split: str) -> "CheckBatch":
        """The first CHECK_EXAMPLES rows of `dataset`, the `split` split of the data set `name`."""
        return cls(tuple(dataset.select(range(min(CHECK_EXAMPLES, len(dataset)))).to_list()), name, split)

    @classmethod
    def of_run(
        cls, script_args: ScriptArguments, run_args: RunArguments, train_dataset: Dataset, eval_dataset: Dataset | None
    ) -> "CheckBatch":
        """The first rows of the data a run evaluated on, else of its training data, as the run loaded them."""
        name = data_description(script_args, run_args)
        if eval_dataset is not None:
            return cls.from_dataset(eval_dataset, name, script_args.dataset_test_split)
        return cls.from_dataset(train_dataset, name, script_args.dataset_train_split)

    def describe(self) -> str:
        return f"{self.dataset} [{self.split}]" if self.dataset else "fixed texts"

    def token_ids(self, tokenizer: PreTrainedTokenizerBase) -> list[list[int]]:
        """Each example as the trainers tokenize it, cut to CHECK_MAX_TOKENS: the prompt and the chosen (or only)
        completion, through the chat template for conversations, else as text ending with EOS."""
        return [self._encode(example, tokenizer)[:CHECK_MAX_TOKENS] for example in self.examples]

    @staticmethod
    def _encode(example: dict | str, tokenizer: PreTrainedTokenizerBase) -> list[int]:
        if isinstance(example, str):
            return tokenizer(example)["input_ids"]
        example = maybe_extract_prompt(example)
        completion = example["chosen"] if "chosen" in example else example["completion"]
        if is_conversational(example):
            return tokenizer.apply_chat_template(example["prompt"] + completion, tokenize=True, return_dict=False)
        if not completion.endswith(tokenizer.eos_token):
            completion += tokenizer.eos_token
        return tokenizer(example["prompt"] + completion)["input_ids"]


# Rows of a half-precision linear layer's weight upcast at a time: blocks of at most 16 MiB in float32.
BLOCK_BYTES = 16 * 2**20


@contextlib.contextmanager
def float32_arithmetic(model: nn.Module) -> Iterator[None]:
    """Run `model` in float32 whatever its weights' dtype, without a float32 copy of the model or of a large layer.

    A linear layer multiplies by its weight a block of rows at a time, each block upcast; an embedding upcasts the
    rows it looks up; any other module with half-precision parameters (a norm) upcasts them while it runs. The
    weights stay as they are, and the extra memory is one block of a weight in float32.
    """
    patched = []
    for module in model.modules():
        if not _half_precision_parameters(module):
            continue
        if isinstance(module, nn.Linear):
            forward = functools.partial(_float32_linear, module)
        elif isinstance(module, nn.Embedding):
            forward = functools.partial(_float32_output, module.forward)
        else:
            forward = functools.partial(_with_float32_parameters, module, module.forward)
        patched.append((module, vars(module).get("forward")))
        module.forward = forward
    try:
        yield
    finally:
        for module, own_forward in patched:
            if own_forward is None:
                del module.forward
            else:
                module.forward = own_forward


def _half_precision_parameters(module: nn.Module) -> list[nn.Parameter]:
    return [
        parameter
        for parameter in module.parameters(recurse=False)
        if parameter.is_floating_point() and parameter.dtype != torch.float32
    ]


def _float32_linear(module: nn.Linear, inputs: torch.Tensor) -> torch.Tensor:
    inputs = inputs.float()
    output = inputs.new_empty(*inputs.shape[:-1], module.out_features)
    rows = max(1, BLOCK_BYTES // (4 * module.in_features))
    for start in range(0, module.out_features, rows):
        bias = None if module.bias is None else module.bias[start : start + rows].float()
        output[..., start : start + rows] = F.linear(inputs, module.weight[start : start + rows].float(), bias)
    return output


def _float32_output(forward: Callable, *args, **kwargs) -> torch.Tensor:
    return forward(*args, **kwargs).float()


def _with_float32_parameters(module: nn.Module, forward: Callable, *args, **kwargs):
    parameters = _half_precision_parameters(module)
    originals = [parameter.data for parameter in parameters]
    for parameter in parameters:
        parameter.data = parameter.data.float()
    try:
        return forward(*args, **kwargs)
    finally:
        for parameter, original in zip(parameters, originals):
            parameter.data = original


def example_logits(model: PreTrainedModel, token_ids: Sequence[list[int]]) -> Iterator[torch.Tensor]:
    """The model's logits for each example in turn, as float32 on the CPU: one forward pass each, so no padding."""
    for ids in token_ids:
        # Not around the yield: the caller would run without gradients, and two of these generators zipped together
        # would leave them off when the second ends.
        with torch.no_grad():
            logits = model(input_ids=torch.tensor([ids], device=model.device)).logits[0]
        yield logits.float().cpu()


@dataclass
class LogitGap:
    """Logits against reference logits, accumulated example by example over every position of the check batch."""

    max_abs: float = 0.0  # the largest absolute difference
    squared: float = 0.0  # the sum of squared differences
    kl: float = 0.0  # the sum over positions of KL(reference || logits)
    positions: int = 0

    @classmethod
    def measure(
        cls, model: PreTrainedModel, token_ids: Sequence[list[int]], reference: Sequence[torch.Tensor]
    ) -> "LogitGap":
        return cls.between(example_logits(model, token_ids), reference)

    @classmethod
    def between(cls, logits: Iterable[torch.Tensor], reference: Sequence[torch.Tensor]) -> "LogitGap":
        """The gap of each example's logits from its reference logits, over the whole check batch."""
        gap = cls()
        for logits, reference_logits in zip(logits, reference):
            # A few positions at a time, so that the float64 temporaries stay small beside one example's logits.
            for chunk, reference_chunk in zip(logits.split(8), reference_logits.split(8)):
                gap._add(chunk, reference_chunk)
        return gap

    def _add(self, logits: torch.Tensor, reference: torch.Tensor) -> None:
        difference = logits - reference
        self.max_abs = max(self.max_abs, difference.abs().max().item())
        self.squared += difference.square().sum().item()
        # In float64: near-equal distributions' KL is far below float32's resolution, where rounding could make it
        # negative.
        log_p, log_q = reference.double().log_softmax(-1), logits.double().log_softmax(-1)
        self.kl += max(F.kl_div(log_q, log_p, log_target=True, reduction="sum").item(), 0.0)
        self.positions += len(reference)

    @property
    def mean_kl(self) -> float:
        return self.kl / self.positions

    def share_kept(self, effect: "LogitGap") -> float | None:
        """1 - ||logits - reference|| / ||reference - base||, with `effect` the base's gap: the share of the
        adapter's effect on the logits that these logits keep; None when the adapter changes nothing."""
        return 1 - math.sqrt(self.squared / effect.squared) if effect.squared > 0 else None

    def same_as(self, other: "LogitGap") -> bool:
        """The same statistics up to float32 summation order: in practice, the same weights and config."""
        pairs = ((self.max_abs, other.max_abs), (self.squared, other.squared), (self.kl, other.kl))
        return self.positions == other.positions and all(
            math.isclose(a, b, rel_tol=1e-5, abs_tol=1e-9) for a, b in pairs
        )

    def summary(self) -> dict[str, float]:
        return {"max_abs_logit_diff": self.max_abs, "mean_kl": self.mean_kl}


def embeddings_tied(model: PreTrainedModel) -> bool:
    """Whether the input and output embeddings are one Parameter."""
    output = model.get_output_embeddings()
    return output is not None and output.weight is model.get_input_embeddings().weight


@dataclass(frozen=True)
class Published:
    """What a run publishes, in the words of its check's report, log line, messages and model card."""

    key: str  # the report's key for the directory the trainer saved it in
    trained: str  # what that directory holds
    check: str  # the check's name
    reference: str  # the model whose logits the published one must reproduce
    compared: str  # the check, in a sentence
    kl: str  # KL(reference || published)
    effect: str  # the reference's logits against the base's: what training changed
    effect_key: str  # the report's key for its largest logit difference


ADAPTER_MERGE = Published(
    key="adapter",
    trained="the adapter",
    check="merge check",
    reference="base + adapter",
    compared="the merged model as saved against the base with the adapter applied, unmerged",
    kl="base + adapter ‖ merged",
    effect="the adapter's effect",
    effect_key="adapter_effect_max_abs_logit_diff",
)
FULL_FINE_TUNE = Published(
    key="trained_model",
    trained="the trained model",
    check="save check",
    reference="the trained model",
    compared="the model as saved against the one the trainer saved",
    kl="trained ‖ saved",
    effect="the training's effect",
    effect_key="training_effect_max_abs_logit_diff",
)


def published_in(report: dict) -> Published:
    """What a check's report is of, by its keys."""
    return ADAPTER_MERGE if ADAPTER_MERGE.key in report else FULL_FINE_TUNE


# A float32 merge rounds nothing: its logits may differ from base + adapter only by float32 summation order, far
# below this share of the largest logit. A tie merged on the wrong side moves them by 7 to 250.
FLOAT32_TOLERANCE = 1e-4


@dataclass(frozen=True)
class MergedModel:
    """The model to publish as it is in memory before saving (merged, or fully fine-tuned, in its final dtype), which
    the saved one must reproduce."""

    shapes: dict[str, tuple[int, ...]]  # the tensors of the base (of the trained model, for a full fine-tune)
    dtype: torch.dtype
    tied: bool  # whether its word embeddings are one weight
    token_ids: list[list[int]]  # the check batch, as the trained tokenizer encodes it
    gap: LogitGap  # its logits against the reference
    largest_logit: float  # of the reference on the check batch
    reference: str = "base + adapter"  # what the reference logits are of, as messages name it


def saved_model_problem(
    saved: PreTrainedModel, saved_token_ids: list[list[int]], gap: LogitGap, merged: MergedModel
) -> str | None:
    """What is wrong with the model as saved, reloaded and measured (`gap`), or None.

    Its tensors' names, shapes and dtype; its word embeddings tied as they were in memory; its tokenizer; its logits
    against those of the model before saving; and, in float32, where nothing is rounded, against the reference's.
    """
    shapes = {name: tuple(tensor.shape) for name, tensor in saved.state_dict().items()}
    missing, extra = sorted(merged.shapes.keys() - shapes.keys()), sorted(shapes.keys() - merged.shapes.keys())
    if missing:
        return f"the saved model has no tensor '{missing[0]}'"
    if extra:
        return f"the saved model has a tensor '{extra[0]}' that the model before saving does not have"
    for name, shape in shapes.items():
        if shape != merged.shapes[name]:
            return f"the saved model's '{name}' has shape {list(shape)} instead of {list(merged.shapes[name])}"
    for name, parameter in saved.named_parameters():
        if parameter.is_floating_point() and parameter.dtype != merged.dtype:
            return f"the saved model's '{name}' is {parameter.dtype} instead of {merged.dtype}"
    if embeddings_tied(saved) != merged.tied or bool(saved.config.get_text_config().tie_word_embeddings) != merged.tied:
        expected = "tied" if merged.tied else "untied"
        return f"the saved model's word embeddings should be {expected}: a tie was broken or created on saving"
    if saved_token_ids != merged.token_ids:
        return "the saved tokenizer encodes the check examples differently from the trained tokenizer"
    if not gap.same_as(merged.gap):
        return (
            f"the saved model's logits are {gap.max_abs:.3g} (max) from {merged.reference}, against "
            f"{merged.gap.max_abs:.3g} before saving: a tensor or the config was saved wrong"
        )
    if merged.dtype == torch.float32 and gap.max_abs > FLOAT32_TOLERANCE * max(1.0, merged.largest_logit):
        return (
            f"in float32, which rounds nothing away, the saved model's logits differ from {merged.reference} by up to "
            f"{gap.max_abs:.3g}"
        )
    return None


# Elements of a tensor checked for NaN and inf at a time: torch.isfinite's temporaries outgrow what it checks (341 MB
# for 191 MB of float32), and on whole weights they raised the peak memory of a 1 GB model's merge by 0.25 GiB.
FINITE_CHECK_BLOCK = 2**20
NON_FINITE = (("NaN", torch.isnan), ("inf", torch.isinf))


def non_finite_tensor(tensors: Iterable[tuple[str, torch.Tensor]]) -> str | None:
    """The first of the (name, tensor) pairs holding NaN or infinite values, as "'name' holds NaN" (inf, NaN and
    inf); None when all are finite."""
    for name, tensor in tensors:
        if not tensor.is_floating_point():
            continue
        blocks = tensor.detach().reshape(-1).split(FINITE_CHECK_BLOCK)
        if not all(torch.isfinite(block).all() for block in blocks):
            found = [(kind, any(test(block).any() for block in blocks)) for kind, test in NON_FINITE]
            return f"'{name}' holds {' and '.join(kind for kind, present in found if present)}"
    return None
