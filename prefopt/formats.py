"""Preference data in the formats other projects write, recognised by its fields and converted to TRL's.

Each format is recognised by its columns (Anthropic's HH transcripts by their text as well), named in one log line
that says how it maps to TRL's columns, and converted row by row to TRL's conversational format: prompt, chosen and
rejected message lists, or prompt, completion and label for KTO. Data in TRL's own format passes unchanged.
`dataset_format` forces a format where the fields could be read two ways. Every conversion turns one row into one
row, in order, so that a later message naming a row names the same line of the file.
"""

import logging
import re
from collections.abc import Callable
from dataclasses import dataclass

from datasets import Dataset, DatasetDict

from prefopt.errors import UserError

logger = logging.getLogger(__name__)

Message = dict[str, str]

# LLaMA-Factory's ShareGPT roles -> chat-template roles: an observation is a tool's answer, a function call the
# assistant's turn that calls it.
SHAREGPT_ROLES = {
    "human": "user",
    "gpt": "assistant",
    "system": "system",
    "observation": "tool",
    "function_call": "assistant",
}
HH_TURN = re.compile(r"\n\n(Human|Assistant):")
HH_REPLY = "\n\nAssistant:"
HH_OTHER_DIALOGUE = "_rejected_in_another_dialogue"  # counted for the log line, then removed


class RowProblem(ValueError):
    """A row the format cannot convert, and the column where it shows."""

    def __init__(self, column: str, problem: str):
        super().__init__(problem)
        self.column = column


@dataclass(frozen=True)
class Format:
    name: str  # the value of dataset_format
    title: str
    mapping: str  # how its fields become TRL's, for the log line
    columns: tuple[tuple[str, ...], ...]  # the fields that recognise it: all of one of these
    convert: Callable[[dict], dict] | None  # one row -> TRL's columns; None: already TRL's
    recognises: Callable[[dict], bool] = lambda row: True  # the first row's content, unless the format is forced

    def fields_in(self, columns: list[str]) -> bool:
        return any(all(column in columns for column in alternative) for alternative in self.columns)

    def describe_fields(self) -> str:
        return " or ".join("/".join(alternative) for alternative in self.columns)


def _text(value, column: str) -> str:
    if not isinstance(value, str):
        raise RowProblem(column, f"expected a string, got {type(value).__name__}")
    return value


def _list(value, column: str) -> list:
    if not isinstance(value, list):
        raise RowProblem(column, f"expected a list, got {type(value).__name__}")
    return value


def _message(value, column: str) -> Message:
    """A message as {role, content}, from {role, content} or ShareGPT's {from, value}."""
    if isinstance(value, dict) and "from" in value:
        role = value["from"]
        if role not in SHAREGPT_ROLES:
            raise RowProblem(column, f"unknown ShareGPT role {role!r} (expected {', '.join(SHAREGPT_ROLES)})")
        return {"role": SHAREGPT_ROLES[role], "content": _text(value.get("value"), column)}
    if isinstance(value, dict) and isinstance(value.get("role"), str):
        return {"role": value["role"], "content": _text(value.get("content"), column)}
    raise RowProblem(column, f"expected a message with role and content (or from and value), got {value!r}")


def _messages(value, column: str) -> list[Message]:
    return [_message(message, column) for message in _list(value, column)]


def _reply(value, column: str) -> list[Message]:
    """One assistant message, as TRL's conversational chosen, rejected and completion hold it."""
    message = _message(value, column)
    if message["role"] != "assistant":
        raise RowProblem(column, f"expected the assistant's reply, got a message of role {message['role']!r}")
    return [message]


def _with_system(row: dict, messages: list[Message]) -> list[Message]:
    """A `system` column, where the format has one, as the first message."""
    system = row.get("system")
    return [{"role": "system", "content": _text(system, "system")}, *messages] if system else messages


def _from_sharegpt(row: dict) -> dict:
    return {
        "prompt": _with_system(row, _messages(row["conversations"], "conversations")),
        "chosen": _reply(row["chosen"], "chosen"),
        "rejected": _reply(row["rejected"], "rejected"),
    }


def _from_llamafactory_kto(row: dict) -> dict:
    messages = _with_system(row, _messages(row["messages"], "messages"))
    label_column = "label" if "label" in row else "kto_tag"
    label = row[label_column]
    if not isinstance(label, bool):
        raise RowProblem(label_column, f"expected true or false, got {label!r}")
    if not messages:
        raise RowProblem("messages", "no messages (an empty list); end the list with the rated assistant turn")
    return {"prompt": messages[:-1], "completion": _reply(messages[-1], "messages"), "label": label}


def _alpaca_outputs(row: dict) -> list:
    if "output" not in row:
        return [_text(row["chosen"], "chosen"), _text(row["rejected"], "rejected")]
    outputs = row["output"]
    if not isinstance(outputs, list) or len(outputs) < 2:
        got = f"{len(outputs)} output" if isinstance(outputs, list) else type(outputs).__name__
        raise RowProblem("output", f"expected a list of 2 or more outputs, best first; got {got}")
    return [_text(output, "output") for output in outputs]


def _from_alpaca(row: dict) -> dict:
    prompt = []
    for turn in _list(row.get("history") or [], "history"):
        if not (isinstance(turn, list) and len(turn) == 2):
            raise RowProblem("history", f"expected [instruction, response] pairs, got {turn!r}")
        prompt += [
            {"role": "user", "content": _text(turn[0], "history")},
            {"role": "assistant", "content": _text(turn[1], "history")},
        ]
    # LLaMA-Factory's query: the instruction, then the input on a line of its own.
    query = "\n".join(part for part in (_text(row["instruction"], "instruction"), row.get("input")) if part)
    outputs = _alpaca_outputs(row)
    return {
        "prompt": _with_system(row, [*prompt, {"role": "user", "content": query}]),
        # Rankings pair the best with the worst: one pair per prompt, as for pairs, with the widest margin.
        "chosen": [{"role": "assistant", "content": outputs[0]}],
        "rejected": [{"role": "assistant", "content": outputs[-1]}],
    }


def _from_openai(row: dict) -> dict:
    request = row["input"]
    if not isinstance(request, dict) or "messages" not in request:
        raise RowProblem("input", f"expected {{messages: [...]}}, got {request!r}")
    return {
        "prompt": _messages(request["messages"], "input"),
        "chosen": [
            _reply(message, "preferred_output")[0] for message in _list(row["preferred_output"], "preferred_output")
        ],
        "rejected": [
            _reply(message, "non_preferred_output")[0]
            for message in _list(row["non_preferred_output"], "non_preferred_output")
        ],
    }


def _is_hh_transcript(text) -> bool:
    return isinstance(text, str) and text.lstrip().startswith("Human:") and HH_REPLY in text


def _hh_dialogue(text, column: str) -> tuple[list[Message], str]:
    """The turns before the last Assistant turn, as messages, and that turn's reply: never a split inside a turn."""
    if not _is_hh_transcript(text):
        raise RowProblem(
            column, "not an HH transcript: expected 'Human: ...' turns up to a last '\\n\\nAssistant:' turn"
        )
    dialogue, _, reply = ("\n\n" + text.lstrip()).rpartition(HH_REPLY)
    _, *turns = HH_TURN.split(dialogue)  # "", speaker, text, speaker, text, ...
    messages = [
        {"role": "user" if speaker == "Human" else "assistant", "content": content.strip()}
        for speaker, content in zip(turns[::2], turns[1::2])
    ]
    return messages, reply.strip()


def _from_hh(row: dict) -> dict:
    prompt, chosen = _hh_dialogue(row["chosen"], "chosen")
    rejected_prompt, rejected = _hh_dialogue(row["rejected"], "rejected")
    return {
        "prompt": prompt,
        "chosen": [{"role": "assistant", "content": chosen}],
        "rejected": [{"role": "assistant", "content": rejected}],
        HH_OTHER_DIALOGUE: rejected_prompt != prompt,
    }


FORMATS = (
    Format(
        "trl",
        "TRL's format",
        "read as is",
        (("prompt", "chosen", "rejected"), ("prompt", "completion", "label")),
        None,
    ),
    Format(
        "sharegpt",
        "ShareGPT pairs",
        "conversations -> prompt messages (human -> user, gpt -> assistant, observation -> tool, function_call -> "
        "assistant), chosen/rejected -> one assistant message each",
        (("conversations", "chosen", "rejected"),),
        _from_sharegpt,
    ),
    Format(
        "llamafactory_kto",
        "LLaMA-Factory KTO data",
        "messages -> prompt messages and, the last one, the completion; label (or kto_tag) -> label",
        (("messages", "label"), ("messages", "kto_tag")),
        _from_llamafactory_kto,
    ),
    Format(
        "alpaca",
        "Alpaca pairs and rankings",
        "system, history, instruction + input -> prompt messages; output[0] (the best) -> chosen and output[-1] (the "
        "worst) -> rejected, those between left out (or the chosen and rejected columns); one assistant message each",
        (("instruction", "output"), ("instruction", "chosen", "rejected")),
        _from_alpaca,
    ),
    Format(
        "openai",
        "OpenAI preference fine-tuning data",
        "input.messages -> prompt, preferred_output -> chosen, non_preferred_output -> rejected",
        (("input", "preferred_output", "non_preferred_output"),),
        _from_openai,
    ),
    Format(
        "hh",
        "Anthropic HH transcripts",
        "chosen/rejected split at their last '\\n\\nAssistant:': the turns before -> prompt messages (Human -> user, "
        "Assistant -> assistant), the last reply -> one assistant message each",
        (("chosen", "rejected"),),
        _from_hh,
        lambda row: _is_hh_transcript(row["chosen"]),
    ),
    Format(
        "trl",
        "TRL's format, implicit prompt",
        "the start that chosen and rejected share -> prompt",
        (("chosen", "rejected"),),
        None,
    ),
)
FORMAT_NAMES = ("auto", *dict.fromkeys(format.name for format in FORMATS))


def recognised_format(split: Dataset, forced: str = "auto") -> Format | None:
    """The first format whose fields `split` has, or with `forced` the first of that name; None if none matches."""
    for format in FORMATS:
        if forced == "auto" and format.fields_in(split.column_names) and len(split) and format.recognises(split[0]):
            return format
        if forced == format.name and format.fields_in(split.column_names):
            return format
    return None


def in_trl_format(dataset: DatasetDict, source: str, forced: str, row_name: Callable[[int], str]) -> DatasetDict:
    """`dataset`'s splits in TRL's columns, converted from the format its first split is in, which one line logs.

    Data of no known format passes as it is, for the column checks to name what is missing.
    """
    first = next(iter(dataset.values()))
    format = recognised_format(first, forced)
    if format is None:
        if forced != "auto":
            fields = " or ".join(f.describe_fields() for f in FORMATS if f.name == forced)
            raise UserError(
                f"{source}: dataset_format {forced} needs the columns {fields} "
                f"(columns: {', '.join(first.column_names)})"
            )
        return dataset
    converted = DatasetDict(
        {name: _converted(split, format, f"{source} [{name}]", row_name) for name, split in dataset.items()}
    )
    note = ""
    if format.convert is _from_hh:
        other = sum(sum(split[HH_OTHER_DIALOGUE]) for split in converted.values())
        converted = converted.remove_columns(HH_OTHER_DIALOGUE)
        if other:
            rows = sum(len(split) for split in converted.values())
            note = (
                f"; in {other} of {rows} rows the rejected transcript's earlier turns differ from the chosen's, and "
                "the prompt is the chosen's"
            )
    logger.info("%s: %s (dataset_format: %s): %s%s", source, format.title, format.name, format.mapping, note)
    return converted


def _converted(split: Dataset, format: Format, where: str, row_name: Callable[[int], str]) -> Dataset:
    if format.convert is None:
        return split
    if not format.fields_in(split.column_names):
        raise UserError(
            f"{where}: {format.title} need the columns {format.describe_fields()} "
            f"(columns: {', '.join(split.column_names)})"
        )

    def convert(row: dict, index: int) -> dict:
        try:
            return format.convert(row)
        except RowProblem as problem:
            raise UserError(f"{where}: column '{problem.column}', {row_name(index)}: {problem}") from None

    return split.map(convert, with_indices=True, remove_columns=split.column_names, desc=f"Converting {format.title}")
