"""Data and models other than the demo's own: the formats other projects write, each converted to TRL's (unit tests
of every conversion, then one short training run per format, spread over the three scripts, merged at the end);
conversational data, unpaired KTO data, another architecture."""

import gzip
import json
import logging
import re
import sys

import pytest
import torch
import yaml
from datasets import Dataset, DatasetDict
from transformers import AutoModelForCausalLM, AutoTokenizer, Qwen2Config, Qwen2ForCausalLM
from trl import ScriptArguments

from prefopt.config import RunArguments
from prefopt.data import load_preference_dataset
from prefopt.errors import UserError
from prefopt.formats import FORMATS, in_trl_format
from prefopt.merge import check_batch_of
from prefopt.merge_check import CHECK_EXAMPLES
from tests.helpers import (
    REPO,
    in_format,
    read_jsonl,
    run_command,
    run_script,
    training_args,
    write_json,
    write_jsonl,
    write_jsonl_gz,
)

STEPS = 4


def user(text):
    return {"role": "user", "content": text}


def assistant(text):
    return {"role": "assistant", "content": text}


# format -> (a row as that format writes it, the row in TRL's format it becomes)
CONVERSIONS = {
    "sharegpt": (
        {
            "conversations": [
                {"from": "system", "value": "Use the weather tool."},
                {"from": "human", "value": "Rain in Oslo?"},
                {"from": "function_call", "value": '{"name": "weather", "arguments": {"city": "Oslo"}}'},
                {"from": "observation", "value": '{"rain": true}'},
                {"from": "human", "value": "So?"},
            ],
            "chosen": {"from": "gpt", "value": "Yes, take an umbrella."},
            "rejected": {"from": "gpt", "value": "No idea."},
        },
        {
            "prompt": [
                {"role": "system", "content": "Use the weather tool."},
                user("Rain in Oslo?"),
                assistant('{"name": "weather", "arguments": {"city": "Oslo"}}'),
                {"role": "tool", "content": '{"rain": true}'},
                user("So?"),
            ],
            "chosen": [assistant("Yes, take an umbrella.")],
            "rejected": [assistant("No idea.")],
        },
    ),
    "llamafactory_kto": (
        {
            "messages": [{"content": "Name a fruit.", "role": "user"}, {"content": "Apple.", "role": "assistant"}],
            "label": False,
        },
        {"prompt": [user("Name a fruit.")], "completion": [assistant("Apple.")], "label": False},
    ),
    "llamafactory_kto with kto_tag": (
        {"messages": [user("Hi."), assistant("Hello."), user("Bye."), assistant("Goodbye.")], "kto_tag": True},
        {
            "prompt": [user("Hi."), assistant("Hello."), user("Bye.")],
            "completion": [assistant("Goodbye.")],
            "label": True,
        },
    ),
    "alpaca pair": (
        {"instruction": "Translate to French.", "input": "Good morning", "output": ["Bonjour", "Bonsoir"]},
        {
            "prompt": [user("Translate to French.\nGood morning")],
            "chosen": [assistant("Bonjour")],
            "rejected": [assistant("Bonsoir")],
        },
    ),
    "alpaca ranking": (
        {
            "instruction": "Name the largest planet.",
            "input": "",
            "output": ["Jupiter.", "Saturn.", "Neptune.", "Mars."],
            "system": "Answer in one word.",
            "history": [["Are you ready?", "Yes."]],
        },
        {
            "prompt": [
                {"role": "system", "content": "Answer in one word."},
                user("Are you ready?"),
                assistant("Yes."),
                user("Name the largest planet."),
            ],
            "chosen": [assistant("Jupiter.")],
            "rejected": [assistant("Mars.")],
        },
    ),
    "alpaca with chosen and rejected": (
        {"instruction": "Add 2 and 2.", "input": "", "chosen": "4", "rejected": "5"},
        {"prompt": [user("Add 2 and 2.")], "chosen": [assistant("4")], "rejected": [assistant("5")]},
    ),
    "openai": (
        {
            "input": {"messages": [user("Is it cold in Oslo?")], "tools": [], "parallel_tool_calls": True},
            "preferred_output": [assistant("Yes, about -5 C today.")],
            "non_preferred_output": [assistant("Maybe.")],
        },
        {
            "prompt": [user("Is it cold in Oslo?")],
            "chosen": [assistant("Yes, about -5 C today.")],
            "rejected": [assistant("Maybe.")],
        },
    ),
    # Both replies start with "I": split at the longest common prefix, the prompt would end inside the reply.
    "hh": (
        {
            "chosen": "\n\nHuman: Can you help me?\n\nAssistant: Sure.\n\nHuman: Name a color.\n\nAssistant: I like blue.",
            "rejected": "\n\nHuman: Can you help me?\n\nAssistant: Sure.\n\nHuman: Name a color.\n\nAssistant: I won't.",
        },
        {
            "prompt": [user("Can you help me?"), assistant("Sure."), user("Name a color.")],
            "chosen": [assistant("I like blue.")],
            "rejected": [assistant("I won't.")],
        },
    ),
}


def loaded(path, **run_keys) -> list[dict]:
    """The train rows of `path` as the scripts read them, in TRL's columns."""
    dataset = load_preference_dataset(ScriptArguments(dataset_name=str(path)), RunArguments(**run_keys))
    return dataset["train"].to_list()


def format_lines(caplog) -> list[str]:
    return [record.getMessage() for record in caplog.records if record.name == "prefopt.formats"]


@pytest.mark.parametrize("case", CONVERSIONS)
def test_each_format_becomes_trl_rows_and_says_so_in_one_line(case, tmp_path, caplog):
    row, expected = CONVERSIONS[case]
    path = write_jsonl(tmp_path / "data.jsonl", [row, row])
    with caplog.at_level(logging.INFO, logger="prefopt.formats"):
        rows = loaded(path)
    assert rows == [expected, expected]
    name = case.split()[0]
    format = next(format for format in FORMATS if format.name == name)
    assert format_lines(caplog) == [f"{path}: {format.title} (dataset_format: {name}): {format.mapping}"]


def test_trl_data_is_read_as_it_is(tmp_path, caplog):
    rows = [{"prompt": "The film", "chosen": " moved me.", "rejected": " bored me."}] * 2
    path = write_jsonl(tmp_path / "data.jsonl", rows)
    with caplog.at_level(logging.INFO, logger="prefopt.formats"):
        assert loaded(path) == rows
    assert format_lines(caplog) == [f"{path}: TRL's format (dataset_format: trl): read as is"]


def test_hh_rows_whose_rejected_answers_another_dialogue_are_counted(tmp_path, caplog):
    row = CONVERSIONS["hh"][0]
    other = {**row, "rejected": "\n\nHuman: Name a color.\n\nAssistant: No."}
    path = write_jsonl(tmp_path / "hh.jsonl", [row, other, row])
    with caplog.at_level(logging.INFO, logger="prefopt.formats"):
        rows = loaded(path)
    assert rows[1]["prompt"] == CONVERSIONS["hh"][1]["prompt"] and rows[1]["rejected"] == [assistant("No.")]
    assert format_lines(caplog)[0].endswith(
        "; in 1 of 3 rows the rejected transcript's earlier turns differ from the chosen's, and the prompt is the "
        "chosen's"
    )


def test_dataset_format_forces_a_reading(tmp_path):
    """HH transcripts read as TRL's implicit prompt: split where chosen and rejected part, inside the reply."""
    path = write_jsonl(tmp_path / "hh.jsonl", [CONVERSIONS["hh"][0]])
    (row,) = loaded(path, dataset_format="trl")
    assert row == CONVERSIONS["hh"][0]  # the prompt is extracted later, from the text the two share
    assert loaded(path) == [CONVERSIONS["hh"][1]]


def test_dataset_columns_rename_before_the_format_is_recognised(tmp_path):
    row, expected = CONVERSIONS["sharegpt"]
    path = write_jsonl(
        tmp_path / "data.jsonl", [{"dialogue": row["conversations"], "good": row["chosen"], "bad": row["rejected"]}]
    )
    columns = {"conversations": "dialogue", "chosen": "good", "rejected": "bad"}
    assert loaded(path, dataset_columns=columns) == [expected]


@pytest.mark.parametrize("name", ["data.jsonl.gz", "data.json.gz"])
def test_compressed_files_read_as_the_plain_ones(name, tmp_path):
    row, expected = CONVERSIONS["openai"]
    rows = [row] * 3
    path = tmp_path / name
    if name.endswith(".jsonl.gz"):
        write_jsonl_gz(path, rows)
    else:
        write_json(tmp_path / "data.json", rows)
        path.write_bytes(gzip.compress((tmp_path / "data.json").read_bytes()))
    assert loaded(path) == [expected] * 3


@pytest.fixture(scope="module")
def tokenizer(demo_assets):
    return AutoTokenizer.from_pretrained(demo_assets.model_dir)


LONG_PROMPT = "Tell me everything about this film, scene by scene: " + "the plot, the acting and the music; " * 12


@pytest.fixture(scope="module")
def format_files(demo_assets, tmp_path_factory):
    """The first 64 demo pairs in each format, in the kind of file its project writes; the HH transcripts end with
    three whose prompt is longer than the configs' max_length (64 tokens)."""
    directory = tmp_path_factory.mktemp("formats")
    pairs = read_jsonl(demo_assets.data_dir / "train.jsonl")[:64]
    long_pairs = [{**pair, "prompt": LONG_PROMPT} for pair in pairs[:3]]
    kto_rows = in_format("llamafactory_kto", pairs)
    return {
        "sharegpt": write_json(directory / "sharegpt.json", in_format("sharegpt", pairs)),
        "hh": write_jsonl_gz(directory / "hh.jsonl.gz", in_format("hh", pairs + long_pairs)),
        "llamafactory_kto": write_json(directory / "kto.json", kto_rows),
        "llamafactory_kto with kto_tag": write_json(
            directory / "kto_tag.json", [{"messages": row["messages"], "kto_tag": row["label"]} for row in kto_rows]
        ),
        "alpaca": write_json(directory / "alpaca.json", in_format("alpaca", pairs)),
        "openai": write_jsonl(directory / "openai.jsonl", in_format("openai", pairs)),
    }


def test_check_batch_of_a_file_in_any_format_is_tokenized_as_the_trainers_do(format_files, tokenizer):
    """`python -m prefopt.merge --dataset` reads each format as the scripts do: the prompt through the chat template,
    then the chosen (or only) completion."""
    for name, path in format_files.items():
        batch = check_batch_of(str(path))
        first = tokenizer.decode(batch.token_ids(tokenizer)[0])
        assert first.startswith("<s><|im_start|>") and "<|im_start|>assistant\n" in first, (name, first)
        assert len(batch.examples) == CHECK_EXAMPLES and batch.describe() == f"{path} [train]"


def merge_report(run_dir, algorithm) -> dict:
    return json.loads((run_dir / "models" / f"{algorithm}_test" / "merge_report.json").read_text())


def trained_steps(run_dir, algorithm) -> int:
    state = json.loads((run_dir / "outputs" / f"{algorithm}_test" / "trainer_state.json").read_text())
    return state["global_step"]


def test_sharegpt_pairs_train_with_dpo_and_merge_as_the_merge_command_checks(demo_assets, format_files, tmp_path):
    path = format_files["sharegpt"]
    result = run_script(
        "dpo.py", *training_args("dpo", demo_assets, tmp_path, STEPS, "--dataset_name", path, "--eval_strategy", "no")
    )
    assert f"{path}: ShareGPT pairs (dataset_format: sharegpt): conversations -> prompt messages" in result.stderr
    assert trained_steps(tmp_path, "dpo") == STEPS
    report = merge_report(tmp_path, "dpo")
    assert report["check_batch"] == {
        "source": f"{path} [train]",
        "examples": CHECK_EXAMPLES,
        "positions": report["check_batch"]["positions"],
    }

    out = tmp_path / "merged_again"
    run_command(
        [
            sys.executable,
            "-m",
            "prefopt.merge",
            str(tmp_path / "outputs" / "dpo_test"),
            "--out",
            str(out),
            "--dataset",
            str(path),
        ]
    )
    again = json.loads((out / "merge_report.json").read_text())
    assert again["check_batch"] == report["check_batch"]
    assert again["max_abs_logit_diff"] == report["max_abs_logit_diff"] and again["mean_kl"] == report["mean_kl"]


def test_compressed_hh_transcripts_with_long_prompts_train_with_dpo(demo_assets, format_files, tmp_path):
    path = format_files["hh"]
    result = run_script(
        "dpo.py", *training_args("dpo", demo_assets, tmp_path, STEPS, "--dataset_name", path, "--eval_strategy", "no")
    )
    assert (
        f"{path}: Anthropic HH transcripts (dataset_format: hh): chosen/rejected split at their last" in result.stderr
    )
    assert re.search(
        rf"{re.escape(str(path))} \[train\]: dropped 3 of 67 rows whose prompt has max_length \(64\) tokens or more "
        r"\(longest \d+\), the first at line 65: they leave no room for a completion; raise max_length to keep them",
        result.stderr,
    )
    assert trained_steps(tmp_path, "dpo") == STEPS
    assert merge_report(tmp_path, "dpo")["check_batch"]["source"] == f"{path} [train]"


def test_alpaca_rankings_and_openai_files_mixed_as_trl_reads_datasets_train_with_simpo(
    demo_assets, format_files, tmp_path
):
    """TRL's `datasets:` block: a quarter of the mixture from the Alpaca rankings, three quarters from the OpenAI
    file, the first rows of each."""
    config = yaml.safe_load((REPO / "training_configs" / "simpo_v1.yaml").read_text())
    del config["dataset_name"], config["dataset_test_split"]
    config["datasets"] = [
        {"path": str(format_files["alpaca"]), "fraction": 0.25},
        {"path": str(format_files["openai"]), "fraction": 0.75},
    ]
    config["test_split_size"] = 8
    (tmp_path / "mixture.yaml").write_text(yaml.safe_dump(config))
    args = training_args("simpo", demo_assets, tmp_path, STEPS)
    args[args.index("--config") + 1] = tmp_path / "mixture.yaml"
    del args[args.index("--dataset_name") : args.index("--dataset_name") + 2]
    result = run_script("simpo.py", *args)
    assert "datasets[0] (" in result.stderr and "Alpaca pairs and rankings (dataset_format: alpaca)" in result.stderr
    assert "OpenAI preference fine-tuning data (dataset_format: openai)" in result.stderr
    assert (
        f"datasets: a mixture of 85 rows: 21 of datasets[0] ({format_files['alpaca']}), 64 of datasets[1] "
        f"({format_files['openai']})" in result.stderr
    )
    assert trained_steps(tmp_path, "simpo") == STEPS
    assert merge_report(tmp_path, "simpo")["check_batch"]["examples"] == CHECK_EXAMPLES


def test_llamafactory_kto_files_mixed_as_the_handbook_reads_dataset_mixture_train_with_kto(
    demo_assets, format_files, tmp_path
):
    """alignment-handbook's `dataset_mixture`: all of one file, half of the other drawn with the seed."""
    mixture = {
        "datasets": [
            {"id": str(format_files["llamafactory_kto"]), "weight": 1.0},
            {"id": str(format_files["llamafactory_kto with kto_tag"]), "weight": 0.5},
        ],
        "test_split_size": 0.1,
    }
    args = training_args("kto", demo_assets, tmp_path, STEPS, "--dataset_mixture", json.dumps(mixture))
    del args[args.index("--dataset_name") : args.index("--dataset_name") + 2]
    result = run_script("kto.py", *args, "--dataset_test_split", "test")
    assert result.stderr.count("LLaMA-Factory KTO data (dataset_format: llamafactory_kto)") == 2
    assert "dataset_mixture: a mixture of 192 rows: 128 of dataset_mixture.datasets[0]" in result.stderr
    assert trained_steps(tmp_path, "kto") == STEPS
    assert merge_report(tmp_path, "kto")["check_batch"]["examples"] == CHECK_EXAMPLES


@pytest.fixture(scope="module")
def conversational_data(demo_assets, tmp_path_factory):
    """The demo pairs as chat messages: the prompt a user turn, chosen and rejected assistant turns."""
    directory = tmp_path_factory.mktemp("conversational")
    for split in ("train", "validation", "test"):
        rows = [
            {
                "prompt": [{"role": "user", "content": row["prompt"]}],
                "chosen": [{"role": "assistant", "content": row["chosen"].strip()}],
                "rejected": [{"role": "assistant", "content": row["rejected"].strip()}],
            }
            for row in read_jsonl(demo_assets.data_dir / f"{split}.jsonl")
        ]
        write_jsonl(directory / f"{split}.jsonl", rows)
    return directory


@pytest.mark.parametrize("algorithm", ["dpo", "kto", "simpo"])
def test_conversational_data_trains_and_merges_with_its_template(algorithm, demo_assets, conversational_data, tmp_path):
    args = training_args(algorithm, demo_assets, tmp_path, STEPS, "--dataset_name", conversational_data)
    run_script(f"{algorithm}.py", *args)
    merged = tmp_path / "models" / f"{algorithm}_test"
    tokenizer = AutoTokenizer.from_pretrained(merged)
    assert tokenizer.chat_template == AutoTokenizer.from_pretrained(demo_assets.model_dir).chat_template
    assert "<|im_start|>" in tokenizer.apply_chat_template([{"role": "user", "content": "Hi"}], tokenize=False)


def test_kto_trains_on_unpaired_data_in_one_file(demo_assets, tmp_path):
    rows = [
        {"prompt": row["prompt"], "completion": row[column], "label": column == "chosen"}
        for row in read_jsonl(demo_assets.data_dir / "train.jsonl")
        for column in ("chosen", "rejected")
    ]
    write_jsonl(tmp_path / "unpaired.jsonl", rows)
    args = training_args("kto", demo_assets, tmp_path, STEPS, "--dataset_name", tmp_path / "unpaired.jsonl")
    result = run_script("kto.py", *args, "--eval_strategy", "no")
    assert f"KTO examples: {len(rows) // 2} desirable, {len(rows) // 2} undesirable" in result.stderr


def test_kto_balances_class_weights_of_unbalanced_data(demo_assets, tmp_path):
    pairs = read_jsonl(demo_assets.data_dir / "train.jsonl")
    rows = [{"prompt": row["prompt"], "completion": row["chosen"], "label": True} for row in pairs[:40]]
    rows += [{"prompt": row["prompt"], "completion": row["rejected"], "label": False} for row in pairs]
    write_jsonl(tmp_path / "unbalanced.jsonl", rows)
    args = training_args("kto", demo_assets, tmp_path, STEPS, "--dataset_name", tmp_path / "unbalanced.jsonl")
    result = run_script("kto.py", *args, "--eval_strategy", "no")
    weight = len(pairs) / 40
    assert f"desirable_weight {weight:.3g}, undesirable_weight 1 (weighted ratio 1" in result.stderr


@pytest.fixture(scope="module")
def qwen2_model(demo_assets, tmp_path_factory):
    """A tiny random Qwen2 (another architecture: biased attention projections) with the demo tokenizer."""
    directory = tmp_path_factory.mktemp("qwen2")
    tokenizer = AutoTokenizer.from_pretrained(demo_assets.model_dir)
    config = Qwen2Config(
        vocab_size=len(tokenizer),
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=128,
        bos_token_id=tokenizer.bos_token_id,
        eos_token_id=tokenizer.eos_token_id,
        pad_token_id=tokenizer.pad_token_id,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return directory


@pytest.mark.parametrize("algorithm", ["dpo", "simpo"])
def test_another_architecture_trains_and_merges(algorithm, demo_assets, qwen2_model, tmp_path):
    run_script(
        f"{algorithm}.py", *training_args(algorithm, demo_assets, tmp_path, STEPS, "--model_name_or_path", qwen2_model)
    )
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "models" / f"{algorithm}_test")
    assert merged.config.model_type == "qwen2"
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "models" / f"{algorithm}_test")
    text = "The movie was really moving."
    assert tokenizer.decode(tokenizer(text)["input_ids"], skip_special_tokens=True) == text


def test_a_split_in_another_format_than_the_first_is_named(tmp_path):
    sharegpt, _ = CONVERSIONS["sharegpt"]
    dataset = DatasetDict(
        {
            "train": Dataset.from_list([sharegpt]),
            "test": Dataset.from_list([{"prompt": "a", "chosen": "b", "rejected": "c"}]),
        }
    )
    with pytest.raises(UserError) as error:
        in_trl_format(dataset, "pairs", "auto", lambda index: f"row {index}")
    assert str(error.value) == (
        "pairs [test]: ShareGPT pairs need the columns conversations/chosen/rejected (columns: prompt, chosen, rejected)"
    )
