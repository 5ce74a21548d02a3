"""Config parsing: TRL's keys from YAML, CLI overrides, and one clear line for each user error."""

import re

import pytest
import yaml
from trl import DPOConfig, KTOConfig

from prefopt.config import parse_args
from prefopt.errors import UserError
from simpo import SimPOConfig
from tests.conftest import REPO, run_script


@pytest.fixture
def write_config(tmp_path, demo_assets):
    """Write a YAML config on the demo assets with `overrides`; return the path."""

    def write(**overrides) -> str:
        config = {
            "model_name_or_path": str(demo_assets.model_dir),
            "dataset_name": str(demo_assets.data_dir),
            "output_dir": str(tmp_path / "outputs" / "run"),
            "merged_model_dir": str(tmp_path / "models" / "run"),
            "bf16": False,  # TRL turns bf16 on by default, which a CPU cannot run
            **overrides,
        }
        path = tmp_path / "config.yaml"
        path.write_text(yaml.safe_dump(config))
        return str(path)

    return write


def test_yaml_values_reach_trl_dataclasses(write_config):
    script_args, training_args, model_args, run_args = parse_args(
        DPOConfig, ["--config", write_config(beta=0.25, lora_r=4, learning_rate=3e-4, use_peft=True)]
    )
    assert (training_args.beta, model_args.lora_r, training_args.learning_rate) == (0.25, 4, 3e-4)
    assert model_args.use_peft and run_args.merge


def test_command_line_overrides_yaml(write_config):
    _, training_args, _, _ = parse_args(DPOConfig, ["--config", write_config(beta=0.25), "--beta", "0.5"])
    assert training_args.beta == 0.5


def test_merged_model_dir_defaults_to_models_and_output_dir_name(write_config, tmp_path):
    config = write_config(output_dir=str(tmp_path / "outputs" / "my_run"), merged_model_dir=None)
    *_, run_args = parse_args(DPOConfig, ["--config", config])
    assert run_args.merged_model_dir == "models/my_run"


def test_loss_plot_goes_next_to_the_run_unless_images_dir_says_otherwise(write_config, tmp_path):
    config = write_config(output_dir=str(tmp_path / "outputs" / "my_run"))
    assert parse_args(DPOConfig, ["--config", config])[3].images_dir == str(tmp_path / "outputs" / "my_run")
    assert parse_args(DPOConfig, ["--config", config, "--images_dir", "images"])[3].images_dir == "images"


@pytest.mark.parametrize("value, expected", [("true", True), ("True", True), ("false", None), ("ckpt", "ckpt")])
def test_resume_from_checkpoint_true_means_latest(write_config, value, expected):
    _, training_args, _, _ = parse_args(DPOConfig, ["--config", write_config(), "--resume_from_checkpoint", value])
    assert training_args.resume_from_checkpoint == expected


@pytest.mark.parametrize(
    "overrides, cli, message",
    [
        ({"learnig_rate": 1e-4}, [], "unknown key 'learnig_rate'; did you mean 'learning_rate'?"),
        ({}, ["--bta", "0.3"], "command line: unknown key 'bta'; did you mean 'beta'?"),
        ({"learning_rate": "fast"}, [], "invalid float value: 'fast'"),
        ({"learning_rate": -1e-4}, [], "learning_rate must be > 0, got -0.0001"),
        ({"beta": 0.0}, [], "beta must be > 0, got 0.0"),
        ({"lora_r": 0}, [], "lora_r must be >= 1, got 0"),
        ({"model_name_or_path": "./no/such/model"}, [], "model_name_or_path: no model at './no/such/model'"),
        ({"dataset_name": "data/missing.jsonl"}, [], "dataset_name: no such file or directory: 'data/missing.jsonl'"),
        ({"model_name_or_path": None}, [], "model_name_or_path is required"),
    ],
)
def test_user_errors_name_the_problem(write_config, overrides, cli, message):
    with pytest.raises(UserError, match=re.escape(message)):
        parse_args(DPOConfig, ["--config", write_config(**overrides), *cli])


def test_existing_merged_model_is_refused_unless_overwrite(write_config, tmp_path):
    (tmp_path / "models" / "run").mkdir(parents=True)
    with pytest.raises(UserError, match="already exists; set overwrite_merged: true"):
        parse_args(DPOConfig, ["--config", write_config()])
    *_, run_args = parse_args(DPOConfig, ["--config", write_config(), "--overwrite_merged", "true"])
    assert run_args.overwrite_merged


def test_keys_of_another_algorithm_are_unknown(write_config):
    with pytest.raises(UserError, match="unknown key 'simpo_gamma'"):
        parse_args(KTOConfig, ["--config", write_config(simpo_gamma=0.5)])


def test_missing_config_file():
    with pytest.raises(UserError, match="config file not found: nowhere.yaml"):
        parse_args(DPOConfig, ["--config", "nowhere.yaml"])


def test_config_that_is_not_a_mapping(tmp_path):
    path = tmp_path / "list.yaml"
    path.write_text("- a\n- b\n")
    with pytest.raises(UserError, match="must contain a YAML mapping"):
        parse_args(DPOConfig, ["--config", str(path)])


def test_script_reports_user_error_in_one_line_and_exits_2(write_config):
    result = run_script("dpo.py", "--config", write_config(learnig_rate=1e-4), check=False)
    assert result.returncode == 2
    assert result.stderr.strip().splitlines()[-1].startswith("error: ")
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("algorithm", ["dpo", "kto", "simpo"])
def test_shipped_demo_configs_parse(algorithm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the config: models/demo-base, data/demo
    (tmp_path / "models" / "demo-base").mkdir(parents=True)
    (tmp_path / "models" / "demo-base" / "config.json").write_text("{}")
    (tmp_path / "data" / "demo").mkdir(parents=True)
    config_class = {"dpo": DPOConfig, "kto": KTOConfig, "simpo": SimPOConfig}[algorithm]
    _, training_args, model_args, run_args = parse_args(
        config_class, ["--config", str(REPO / "training_configs" / f"{algorithm}_v1.yaml")]
    )
    assert model_args.use_peft and training_args.bf16 is False and training_args.gradient_checkpointing is False
    assert run_args.merged_model_dir == f"models/{algorithm}_v1" and run_args.images_dir == "images"


def test_renamed_keys_of_published_configs_carry_over(write_config, caplog):
    config = write_config(warmup_ratio=0.1, torch_dtype="bfloat16", beta=2.5, gamma_beta_ratio=0.55, loss_type="simpo")
    _, training_args, model_args, _ = parse_args(SimPOConfig, ["--config", config])
    assert training_args.warmup_steps == 0.1 and model_args.dtype == "bfloat16"
    assert training_args.simpo_gamma == pytest.approx(1.375)
    assert "'gamma_beta_ratio' is now 'simpo_gamma: 1.375'" in caplog.text


def test_hub_token_in_a_config_is_refused(write_config):
    with pytest.raises(UserError, match="'hub_token' does not belong in a config file"):
        parse_args(DPOConfig, ["--config", write_config(hub_token="hf_secret")])


def test_dataset_columns_from_yaml_and_json(write_config):
    columns = {"prompt": "question", "chosen": "good", "rejected": "bad"}
    *_, run_args = parse_args(DPOConfig, ["--config", write_config(dataset_columns=columns)])
    assert run_args.dataset_columns == columns
    cli = ["--dataset_columns", '{"prompt": "question"}']
    assert parse_args(DPOConfig, ["--config", write_config(), *cli])[3].dataset_columns == {"prompt": "question"}
    with pytest.raises(UserError, match="dataset_columns must be a mapping"):
        parse_args(DPOConfig, ["--config", write_config(), "--dataset_columns", "question"])


@pytest.mark.parametrize(
    "config_class, overrides, warning",
    [
        (SimPOConfig, {"beta": 0.1, "simpo_gamma": 0.5}, "SimPO beta 0.1 is far from the paper's 2.0-2.5"),
        (SimPOConfig, {"beta": 2.0, "simpo_gamma": 4.0}, "SimPO simpo_gamma/beta = 2"),
        (DPOConfig, {"beta": 5.0}, "beta 5 is outside the usual 0.01-1.0 of DPO and KTO"),
        (DPOConfig, {"use_peft": True, "learning_rate": 0.1}, "learning_rate 0.1 is unusual for LoRA"),
        (DPOConfig, {"use_peft": False, "learning_rate": 1e-3}, "learning_rate 0.001 is high for full fine-tuning"),
    ],
)
def test_unusual_settings_are_warned_about(write_config, caplog, config_class, overrides, warning):
    parse_args(config_class, ["--config", write_config(**overrides)])
    assert warning in caplog.text


def test_shipped_settings_raise_no_warning(write_config, caplog):
    parse_args(SimPOConfig, ["--config", write_config(use_peft=True, learning_rate=2e-3)])
    assert "WARNING" not in caplog.text


RECIPES = sorted((REPO / "training_configs").glob("*/*.yaml"))


@pytest.mark.parametrize("recipe", RECIPES, ids=lambda path: f"{path.parent.name}/{path.name}")
def test_real_model_recipes_parse_and_validate(recipe, caplog):
    """The hub ids cannot be downloaded here: parse and validate as far as that goes, with no warning raised."""
    config_class = {"dpo": DPOConfig, "kto": KTOConfig, "simpo": SimPOConfig}[recipe.stem.split("_")[0]]
    # use_cpu: the recipes ask for bf16, which TrainingArguments refuses on a machine without a GPU otherwise
    _, training_args, model_args, run_args = parse_args(config_class, ["--config", str(recipe), "--use_cpu", "true"])
    assert model_args.use_peft and training_args.bf16 and training_args.gradient_checkpointing
    assert run_args.merged_model_dir.startswith("models/")
    assert "WARNING" not in caplog.text


def test_recipes_cover_every_algorithm_and_qlora():
    names = {f"{path.parent.name}/{path.stem}" for path in RECIPES}
    assert {"qwen2.5-0.5b-instruct/dpo", "qwen2.5-0.5b-instruct/kto", "qwen2.5-0.5b-instruct/simpo"} <= names
    assert any("qlora" in name for name in names)
