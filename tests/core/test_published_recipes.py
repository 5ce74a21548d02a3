"""Published recipes, copied with their keys and values as published (`published_recipes/`, each naming its source):
the keys that were renamed since are carried over with a note, the ones without a successor are dropped with a note
or refused with what to set instead, and a command-line flag overrides a carried-over key. The SimPO recipe, a full
fine-tune, lands in merged_model_dir as a LoRA run's merged model does."""

import json
import re
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from transformers import AutoModelForCausalLM, AutoTokenizer
from trl import DPOConfig, ModelConfig

from prefopt.config import parse_args
from prefopt.errors import UserError
from prefopt.merge import publish_model, report_line
from prefopt.mixtures import HandbookDataset, HandbookMixture
from simpo import SimPOConfig
from tests.helpers import front_matter, run_script

RECIPES = Path(__file__).parent / "published_recipes"
SIMPO_LLAMA3 = RECIPES / "simpo_llama-3-8b-instruct-simpo.yaml"


def notes(caplog) -> list[str]:
    """The config's notes, without the path of the config that starts each."""
    return [message.split(": ", 1)[1] for message in caplog.messages if "published_recipes" in message]


@pytest.fixture(scope="module")
def simpo_recipe(demo_assets, tmp_path_factory):
    """The SimPO repository's Llama-3-Instruct recipe (the version with use_flash_attention_2), with only its model
    and data swapped, and flags for a machine without a GPU, flash-attn or wandb: a full fine-tune, as published.
    Its outputs' directory and its log."""
    run_dir = tmp_path_factory.mktemp("simpo_recipe")
    result = run_script(
        "simpo.py",
        "--config", SIMPO_LLAMA3,
        "--model_name_or_path", demo_assets.model_dir,
        "--dataset_name", demo_assets.data_dir,
        "--output_dir", run_dir / "outputs" / "recipe",
        "--merged_model_dir", run_dir / "models" / "recipe",
        # flash-attn needs a GPU: the model would not load with flash_attention_2, which use_flash_attention_2 sets
        "--attn_implementation", "sdpa",
        "--bf16", "false",
        "--report_to", "none",
        "--dataset_num_proc", "1",
        "--max_steps", "2",
        OMP_NUM_THREADS="1",
    )  # fmt: skip
    return run_dir, result.stderr


def test_simpo_paper_recipe_runs_with_its_renamed_keys_carried_over(simpo_recipe):
    run_dir, stderr = simpo_recipe
    for note in (
        "'use_flash_attention_2: true' is now 'attn_implementation: flash_attention_2', which --attn_implementation "
        "on the command line overrides",
        "'evaluation_strategy: steps' is now 'eval_strategy: steps'",
        "'preprocessing_num_workers: 12' is now 'dataset_num_proc: 12', which --dataset_num_proc on the command line "
        "overrides",
        "'max_prompt_length: 1800' is ignored: TRL 1.16 removed it, and only max_length truncates",
        "'dataset_splits: [train, test]' is now 'dataset_train_split: train, dataset_test_split: test'",
        "'gamma_beta_ratio: 0.55' is now 'simpo_gamma: 1.375'",
    ):
        assert note in stderr
    state = yaml.safe_load((run_dir / "outputs" / "recipe" / "trainer_state.json").read_text())
    assert state["global_step"] == 2


# This machine has no GPU, and no wandb, which the SimPO repository's recipes report to.
NO_GPU_NOR_WANDB = ("--use_cpu", "true", "--report_to", "none")


@pytest.mark.parametrize("recipe", ["simpo_llama-3-8b-instruct-simpo.yaml", "simpo_gemma-2-9b-it-simpo.yaml"])
def test_simpo_recipes_name_the_tracker_to_install(recipe, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    config = yaml.safe_load((RECIPES / recipe).read_text())
    assert config["report_to"] == ["wandb"]
    config.pop("chat_template", None)  # the Gemma recipe's, refused before report_to is read
    (tmp_path / recipe).write_text(yaml.safe_dump(config))
    with pytest.raises(UserError) as error:
        parse_args(SimPOConfig, ["--config", recipe, "--use_cpu", "true"])
    assert str(error.value) == (
        "report_to: wandb is not installed; install it (pip install wandb) or remove it from report_to "
        "(docs/configuration.md, Trackers)"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == [recipe]


@pytest.mark.parametrize(
    "command_line, attention", [([], "flash_attention_2"), (["--attn_implementation", "sdpa"], "sdpa")]
)
def test_command_line_overrides_a_renamed_key(command_line, attention, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # the recipe's relative output_dir and merged_model_dir
    args = ["--config", str(SIMPO_LLAMA3), *NO_GPU_NOR_WANDB, *command_line]
    _, _, model_args, _ = parse_args(SimPOConfig, args)
    assert model_args.attn_implementation == attention


def test_simpo_recipe_values_carry_over(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    script_args, training_args, model_args, _ = parse_args(
        SimPOConfig, ["--config", str(SIMPO_LLAMA3), *NO_GPU_NOR_WANDB]
    )
    assert (script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_test_split) == (
        "princeton-nlp/llama3-ultrafeedback",
        "train",
        "test",
    )
    assert (training_args.eval_strategy, training_args.dataset_num_proc, training_args.warmup_steps) == (
        "steps",
        12,
        0.1,
    )
    assert training_args.simpo_gamma == pytest.approx(2.5 * 0.55) and model_args.dtype is None
    assert "'dataset_mixer: {princeton-nlp/llama3-ultrafeedback: 1.0}' is now 'dataset_name: " in caplog.text


def test_handbook_qlora_recipe_values_carry_over(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    recipe = RECIPES / "handbook_zephyr-7b-beta_dpo_config_qlora.yaml"
    script_args, training_args, model_args, _ = parse_args(DPOConfig, ["--config", str(recipe), "--use_cpu", "true"])
    assert (script_args.dataset_name, script_args.dataset_train_split, script_args.dataset_test_split) == (
        "HuggingFaceH4/ultrafeedback_binarized",
        "train_prefs",
        "test_prefs",
    )
    assert (model_args.dtype, model_args.load_in_4bit, training_args.dataset_num_proc) == ("bfloat16", True, 12)
    assert notes(caplog) == [
        "'max_prompt_length: 512' is ignored: TRL 1.16 removed it, and only max_length truncates, cutting the end of "
        "each completion (rows whose prompt has max_length tokens or more are dropped before training, with a note)",
        "'torch_dtype: bfloat16' is now 'dtype: bfloat16'",
        "'dataset_mixer: {HuggingFaceH4/ultrafeedback_binarized: 1.0}' is now "
        "'dataset_name: HuggingFaceH4/ultrafeedback_binarized'",
        "'dataset_splits: [train_prefs, test_prefs]' is now "
        "'dataset_train_split: train_prefs, dataset_test_split: test_prefs'",
        "'preprocessing_num_workers: 12' is now 'dataset_num_proc: 12'",
        "'warmup_ratio: 0.1' is now 'warmup_steps: 0.1'",
    ]


def test_handbook_mixtures_are_read_as_the_handbook_reads_them(tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    recipe = RECIPES / "handbook_zephyr-7b-beta_dpo_config_full.yaml"
    _, _, _, run_args = parse_args(DPOConfig, ["--config", str(recipe), *NO_GPU_NOR_WANDB])
    columns = ["chosen", "rejected"]
    assert run_args.dataset_mixture == HandbookMixture(
        datasets=[
            HandbookDataset("HuggingFaceH4/ultrafeedback_binarized", "default", "train_prefs", columns, 1.0),
            HandbookDataset("HuggingFaceH4/ultrafeedback_binarized", "default", "test_prefs", columns, 1.0),
        ],
        seed=0,
        test_split_size=2000,
    )
    recipe = RECIPES / "handbook_smollm3_dpo_apo.yaml"
    _, _, _, run_args = parse_args(DPOConfig, ["--config", str(recipe), *NO_GPU_NOR_WANDB])
    mixture = run_args.dataset_mixture
    assert [(dataset.id, dataset.config, dataset.weight) for dataset in mixture.datasets] == [
        ("HuggingFaceTB/smoltalk2", "Preference", 0.5),
        ("HuggingFaceTB/smoltalk2", "Preference", 0.25),
    ]
    assert (mixture.seed, mixture.test_split_size) == (None, None)  # the run's seed draws the rows here
    assert (
        "'overwrite_output_dir: true' is ignored: transformers 5 removed it: a run writes into output_dir whatever it "
        "holds, and continues from its checkpoints only with resume_from_checkpoint: true" in notes(caplog)
    )


# recipe -> (the key refused, the line that replaces it as the message says, what then carries over)
REFUSED = {
    "handbook_pref_align_scan_dpo_config_zephyr.yaml": (
        "push_to_hub_revision",
        "push_to_hub: true",
        "'hub_model_revision: dpo-beta-0.01' is now 'hub_revision: dpo-beta-0.01'",
    ),
    "simpo_gemma-2-9b-it-simpo.yaml": (
        "chat_template",
        "chat_template_path: gemma.jinja",
        "'gamma_beta_ratio: 0.5' is now 'simpo_gamma: 5.0'",
    ),
}


@pytest.mark.parametrize("recipe", REFUSED)
def test_keys_without_successor_are_refused_until_replaced(recipe, tmp_path, monkeypatch, caplog):
    monkeypatch.chdir(tmp_path)
    key, replacement, carried_note = REFUSED[recipe]
    config_class = SimPOConfig if recipe.startswith("simpo") else DPOConfig
    with pytest.raises(UserError, match=re.escape(f"published_recipes/{recipe}: '{key}' is not a key; ")):
        parse_args(config_class, ["--config", str(RECIPES / recipe), "--use_cpu", "true"])

    config = yaml.safe_load((RECIPES / recipe).read_text())
    del config[key]
    config.update(yaml.safe_load(replacement))
    (tmp_path / "published_recipes").mkdir()
    fixed = tmp_path / "published_recipes" / recipe
    fixed.write_text(yaml.safe_dump(config))
    parse_args(config_class, ["--config", str(fixed), *NO_GPU_NOR_WANDB])
    assert carried_note in notes(caplog)


def test_a_full_fine_tune_is_published_to_merged_model_dir_checked_and_with_its_card(simpo_recipe, demo_assets):
    """The recipe trains every weight (use_peft is off): the model the trainer saved in output_dir is saved to
    merged_model_dir too, checked to give its logits, with a report and a card."""
    run_dir, stderr = simpo_recipe
    output_dir, merged_dir = run_dir / "outputs" / "recipe", run_dir / "models" / "recipe"
    names = {path.name for path in merged_dir.iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "merge_report.json", "README.md"} <= names
    assert not any(name.startswith(("adapter", "checkpoint", "trainer_state")) for name in names)

    report = json.loads((merged_dir / "merge_report.json").read_text())
    assert report["trained_model"] == str(output_dir) and "adapter" not in report
    assert (report["base_dtype"], report["trained_dtype"], report["merged_dtype"]) == ("float32",) * 3
    # Saved in the dtype it trained in: the same weights, the same logits.
    assert (report["max_abs_logit_diff"], report["mean_kl"], report["share_kept"]) == (0.0, 0.0, 1.0)
    assert report["training_effect_max_abs_logit_diff"] > 0 and report["warning"] is None
    assert f"INFO prefopt.merge: {report_line(report)}" in stderr

    tokenizer = AutoTokenizer.from_pretrained(merged_dir)
    inputs = tokenizer(["The movie was", "I watched this film last night and it"], return_tensors="pt", padding=True)
    with torch.no_grad():
        published, trained, base = (
            AutoModelForCausalLM.from_pretrained(directory)(**inputs).logits
            for directory in (merged_dir, output_dir, demo_assets.model_dir)
        )
    assert torch.equal(published, trained)
    assert (trained - base).abs().max() > 0

    metadata, text = front_matter(merged_dir / "README.md"), (merged_dir / "README.md").read_text()
    assert "base_model" not in metadata  # a local base, of no known hub id
    assert {"simpo", "trl"} <= set(metadata["tags"]) and "lora" not in metadata["tags"]
    assert (
        "`demo-base` (a local model) with all of its weights fine-tuned, trained with SIMPO by TRL, saved in float32 "
        "from the model the trainer saved (`recipe`, in float32)." in text
    )
    assert "| weights | all trained: a full fine-tune (use_peft: false) |" in text
    assert "## Save check" in text and "| share of the training's effect on the logits kept | 100.0% |" in text
    assert str(demo_assets.model_dir) not in text


def test_a_full_fine_tune_saved_in_bfloat16_is_rounded_once_and_the_loss_reported(simpo_recipe, demo_assets, tmp_path):
    """Two steps at lr 1e-6 move the float32 weights far less than rounding them to bfloat16 does: the logits end
    further from the trained model's than the base's are (share kept below 0), and the warning says so."""
    run_dir, _ = simpo_recipe
    output_dir = run_dir / "outputs" / "recipe"
    model_args = ModelConfig(model_name_or_path=str(demo_assets.model_dir))  # use_peft: false, as in the recipe
    report = publish_model(output_dir, tmp_path / "bfloat16", model_args, merged_dtype="bfloat16")
    assert (report["trained_dtype"], report["merged_dtype"]) == ("float32", "bfloat16")
    assert report["share_kept"] < 0 and report["max_abs_logit_diff"] > report["training_effect_max_abs_logit_diff"]
    assert report["warning"].startswith("saving in bfloat16 kept none of the training's effect on the logits")
    assert "merged_dtype: float32 keeps all of it, at 1.74 MB instead of 0.87 MB" in report["warning"]
    saved, trained = (load_file(directory / "model.safetensors") for directory in (tmp_path / "bfloat16", output_dir))
    assert saved.keys() == trained.keys()
    assert all(torch.equal(saved[name], trained[name].to(torch.bfloat16)) for name in saved)
