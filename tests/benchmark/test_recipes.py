"""`python -m benchmark recipes` at a CPU's size: it runs, and its report is consistent with itself and the data.

No speed is asserted: the tiny models' speeds say nothing about a GPU's.
"""

import json
import sys
from argparse import Namespace
from dataclasses import asdict
from pathlib import Path

import pytest
import torch
from transformers import AutoConfig, AutoModelForCausalLM

from benchmark.recipes import (
    ARCHITECTURES_DIR,
    AS_IS,
    LENGTHS,
    QUICK,
    RECIPES,
    SETTINGS,
    character_tokenizer,
    recipe_shape,
    recipe_variants,
    synthetic_rows,
)
from benchmark.report import recipes_markdown
from benchmark.runs import PREFOPT, TRL, Variant, measure_run
from benchmark.summaries import summarise
from prefopt.errors import UserError
from tests.helpers import run_command

STEPS = 3
QUICK_RECIPE = "qwen2.5-0.5b-instruct/dpo"


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    """The quick grid at tiny scale, 3 steps: its JSON report and Markdown."""
    output_dir = tmp_path_factory.mktemp("recipes")
    command = [sys.executable, "-m", "benchmark", "recipes", "--quick", "--scale", "tiny", "--output_dir", output_dir]
    run_command(list(map(str, command)))
    return json.loads((output_dir / "recipes_tiny.json").read_text()), (output_dir / "recipes_tiny.md").read_text()


def test_every_variant_of_the_quick_grid_is_measured(report):
    rows = report[0]["summary"]
    labels = [(row["runner"], row["label"]) for row in rows]
    assert labels == [
        (TRL, AS_IS),
        (PREFOPT, AS_IS),
        (PREFOPT, "micro-batch 32"),
        (PREFOPT, "micro-batch 32, gradient_checkpointing=false"),
        (PREFOPT, "micro-batch 32, precompute_ref_log_probs"),
    ]
    for row in rows:
        assert row["failed"] is None and row["step_s"] > 0 and row["peak_rss_train_mib"] > 0
        assert row["tokens_per_s"] * row["step_s"] == pytest.approx(row["tokens_per_step"])


def test_tokens_per_step_are_the_datas_non_padding_tokens(report):
    """Each run trains one epoch of the data: every pair's prompt twice, both responses and an EOS after each."""
    batch, max_length = recipe_shape(QUICK_RECIPE)
    rows = synthetic_rows(batch * STEPS, unpaired=False, max_length=max_length // 8, divisor=8)
    tokens = sum(2 * len(row["prompt"]) + len(row["chosen"]) + len(row["rejected"]) + 2 for row in rows)
    for row in report[0]["summary"]:
        assert row["tokens_per_step"] * STEPS == tokens, row["label"]


def test_effective_batch_is_the_recipes_in_every_variant(report):
    rows = {row["label"]: row for row in report[0]["summary"] if row["runner"] == PREFOPT}
    assert {row["effective_batch"] for row in rows.values()} == {32}
    assert (rows[AS_IS]["micro_batch"], rows[AS_IS]["accumulation_steps"]) == (4, 8)  # the recipe's
    assert (rows["micro-batch 32"]["micro_batch"], rows["micro-batch 32"]["accumulation_steps"]) == (32, 1)


def test_settings_that_keep_the_math_keep_the_loss_and_gradient_norm(report):
    """Float32 and no dropout at tiny scale: the same numbers to float precision, TRL's script and ours alike."""
    rows = report[0]["summary"]
    reference = rows[0]
    assert reference["loss"] == pytest.approx(0.6931, abs=1e-3) and reference["grad_norm"] > 0
    for row in rows[1:]:
        assert row["loss"] == pytest.approx(reference["loss"], rel=1e-5), row["label"]
        assert row["grad_norm"] == pytest.approx(reference["grad_norm"], rel=1e-4), row["label"]


def test_markdown_has_a_table_per_recipe_and_no_gpu_numbers_on_cpu(report):
    data, markdown = report
    table = markdown.split(f"## {QUICK_RECIPE}")[1]
    assert (
        "| runner | settings | micro-batch x accumulation | step (s) | tokens/step | tokens/s | tokens/s vs TRL |"
        in table
    )
    trl, ours = data["summary"][:2]
    (ratio,) = [row for row in data["ratios"] if row["label"] == AS_IS]
    assert ratio["tokens_per_s"] == pytest.approx(ours["tokens_per_s"] / trl["tokens_per_s"])
    if not torch.cuda.is_available():
        assert f"| {PREFOPT} | {AS_IS} | 4 x 8 |" in table and "| n/a | n/a |" in table  # MFU, peak GPU


# --- The suite's parts, without running it ----------------------------------------------------------------------------
@pytest.mark.parametrize(
    "architecture, parameters",
    [("qwen2.5-0.5b-instruct", 494_032_768), ("llama-3.1-8b-instruct", 8_030_261_248)],  # the models' published sizes
)
def test_architectures_are_the_published_models(architecture, parameters):
    config = AutoConfig.for_model(**json.loads((ARCHITECTURES_DIR / f"{architecture}.json").read_text()))
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    assert model.num_parameters() == parameters


def test_a_text_of_n_characters_is_n_tokens():
    tokenizer = character_tokenizer()
    rows = synthetic_rows(64, unpaired=False, max_length=1024, divisor=1)
    for row in rows:
        for column in ("prompt", "chosen", "rejected"):
            assert len(tokenizer(row[column])["input_ids"]) == len(row[column])
        assert len(tokenizer(row["prompt"] + row["chosen"] + tokenizer.eos_token)["input_ids"]) <= 1024
        assert row["length"] == len(row["prompt"]) + len(row["chosen"]) + len(row["rejected"])
    assert LENGTHS["prompt"].low <= min(len(row["prompt"]) for row in rows)


def test_unpaired_rows_are_balanced():
    rows = synthetic_rows(32, unpaired=True, max_length=1024, divisor=1)
    assert set(rows[0]) == {"prompt", "completion", "label"} and sum(row["label"] for row in rows) == 16


@pytest.mark.parametrize("name", RECIPES)
def test_every_variant_keeps_the_effective_batch_and_takes_only_its_trainers_settings(name):
    recipe = RECIPES[name]
    recipe = type(recipe)(recipe.algorithm, recipe.architecture, recipe.micro_batches, tuple(SETTINGS))
    variants = recipe_variants(name, recipe, Path("model"), Path("data"), tiny=False)
    batch, _ = recipe_shape(name)
    for variant in variants[2:]:
        assert (
            int(flag(variant, "--per_device_train_batch_size")) * int(flag(variant, "--gradient_accumulation_steps"))
            == batch
        )
    labels = [variant.label.split(", ")[-1] for variant in variants]
    assert ("group_by_length" in labels) == (recipe.algorithm != "kto")  # KTO's KL term needs sequential sampling
    assert ("precompute_ref_log_probs" in labels) == (recipe.algorithm != "simpo")  # SimPO has no reference
    assert ("use_fused_lm_head" in labels) == (recipe.algorithm == "simpo")
    assert [variant.runner for variant in variants[:2]] == [TRL, PREFOPT]
    assert "--merge" not in variants[0].flags  # a key of ours, which TRL's scripts do not know


def test_quick_grid_is_a_part_of_the_full_one():
    for name, recipe in QUICK.items():
        assert set(recipe.micro_batches) <= set(RECIPES[name].micro_batches)
        assert set(recipe.settings) <= set(RECIPES[name].settings)
        assert "group_by_length" not in recipe.settings  # it changes the batches, and so the numbers compared


def flag(variant: Variant, name: str) -> str:
    """The value a flag takes on the command line: its last occurrence, as argparse reads it."""
    return [variant.flags[index + 1] for index, value in enumerate(variant.flags) if value == name][-1]


def test_a_run_out_of_gpu_memory_is_recorded_and_reported(monkeypatch, tmp_path):
    def out_of_memory(command, log_path, **kwargs):
        Path(log_path).write_text("torch.OutOfMemoryError: CUDA out of memory. Tried to allocate 18.00 GiB\n")
        raise UserError("failed")

    monkeypatch.setattr("benchmark.runs.run_logged", out_of_memory)
    variant = Variant("dpo", PREFOPT, "micro-batch 32", config=QUICK_RECIPE)
    run = measure_run(variant, tmp_path / "run", Namespace(model=Path("m"), dataset=Path("d"), max_steps=STEPS))
    assert run["failed"] == "out of memory"
    (row,) = summarise([variant], [{**asdict(variant), "repeat": 0, **run}])
    assert row["failed"] == "out of memory" and "step_s" not in row
    report = {
        "suite": "recipes", "command": "python -m benchmark recipes", "created": "now", "duration_s": 60.0,
        "machine": {"cpu": "c", "usable_cores": 1, "logical_cores": 1, "memory_gib": 1.0, "python": "3",
                    "torch": "t", "transformers": "t", "trl": "t", "peft": "p", "datasets": "d", "accelerate": "a"},
        "settings": {"max_steps": STEPS, "repeats": 1, "scale": "full"},
        "runs": [{**run, "device": "cuda"}], "summary": [row], "ratios": [],
    }  # fmt: skip
    assert "| prefopt | micro-batch 32 | out of memory | n/a |" in recipes_markdown(report)


def test_other_failures_keep_their_error(monkeypatch, tmp_path):
    def crash(command, log_path, **kwargs):
        Path(log_path).write_text("ValueError: a bug\n")
        raise UserError("benchmark: crashed")

    monkeypatch.setattr("benchmark.runs.run_logged", crash)
    variant = Variant("dpo", PREFOPT, AS_IS, config=QUICK_RECIPE)
    with pytest.raises(UserError, match="crashed"):
        measure_run(variant, tmp_path / "run", Namespace(model=Path("m"), dataset=Path("d"), max_steps=STEPS))
