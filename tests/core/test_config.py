"""Config parsing: TRL's keys from YAML, CLI overrides, renamed keys and warnings (user errors: test_bad_inputs.py)."""

import pytest
import torch
import yaml
from safetensors.torch import save_file
from trl import DPOConfig, KTOConfig

from prefopt.config import parse_args
from simpo import SimPOConfig
from tests.helpers import REPO, write_checkpoint


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
def test_resume_from_checkpoint_true_means_latest(write_config, value, expected, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_checkpoint(tmp_path / "ckpt")
    _, training_args, _, _ = parse_args(DPOConfig, ["--config", write_config(), "--resume_from_checkpoint", value])
    assert training_args.resume_from_checkpoint == expected


def test_existing_merged_model_is_replaced_with_overwrite(write_config, tmp_path):
    (tmp_path / "models" / "run").mkdir(parents=True)
    *_, run_args = parse_args(DPOConfig, ["--config", write_config(), "--overwrite_merged", "true"])
    assert run_args.overwrite_merged


@pytest.mark.parametrize("algorithm", ["dpo", "kto", "simpo"])
def test_shipped_demo_configs_parse(algorithm, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # relative paths in the config: models/demo-base, data/demo
    (tmp_path / "models" / "demo-base").mkdir(parents=True)
    (tmp_path / "models" / "demo-base" / "config.json").write_text('{"model_type": "llama"}')
    save_file({"weight": torch.zeros(1)}, tmp_path / "models" / "demo-base" / "model.safetensors")
    (tmp_path / "data" / "demo").mkdir(parents=True)
    config_class = {"dpo": DPOConfig, "kto": KTOConfig, "simpo": SimPOConfig}[algorithm]
    _, training_args, model_args, run_args = parse_args(
        config_class, ["--config", str(REPO / "training_configs" / f"{algorithm}_v1.yaml")]
    )
    assert model_args.use_peft and training_args.bf16 is False and training_args.gradient_checkpointing is False
    assert run_args.merged_model_dir == f"models/{algorithm}_v1" and run_args.images_dir == "images"


def test_renamed_keys_carry_over_with_a_note(write_config, caplog):
    """Published recipes test the others (test_published_recipes.py); these are in none of the copied ones."""
    config = write_config(group_by_length=True, use_flash_attention_2=False, torch_dtype="bfloat16")
    _, training_args, model_args, _ = parse_args(DPOConfig, ["--config", config])
    assert (training_args.train_sampling_strategy, model_args.attn_implementation) == ("group_by_length", None)
    assert model_args.dtype == "bfloat16"
    assert [message.split(": ", 1)[1] for message in caplog.messages if "config.yaml" in message] == [
        "'group_by_length: true' is now 'train_sampling_strategy: group_by_length'",
        "'torch_dtype: bfloat16' is now 'dtype: bfloat16'",
        "'use_flash_attention_2: false' is the default now, dropped",
    ]


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
