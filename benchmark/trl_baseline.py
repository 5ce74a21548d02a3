"""TRL's side of the `versus_trl` and `recipes` suites: its own example scripts, run on our configs without our keys.

TRL ships `trl/scripts/dpo.py` and `kto.py` (what `trl dpo` and `trl kto` launch) but no CPO script; `trl_simpo` is
its dpo.py with `CPOTrainer` in place of `DPOTrainer`, and nothing of this repository.
"""

from dataclasses import fields
from importlib import resources
from pathlib import Path

import yaml
from trl import DatasetMixtureConfig

from benchmark.configs import training_config
from prefopt.config import RunArguments


# --- TRL's side ------------------------------------------------------------------------------------------------------
def trl_target(algorithm: str) -> str:
    """TRL's example script, which `trl dpo` and `trl kto` run through `accelerate launch`; TRL has none for SimPO."""
    if algorithm == "simpo":
        return "benchmark.trl_baseline:trl_simpo"
    return str(resources.files("trl.scripts") / f"{algorithm}.py")


def trl_simpo(arguments: list[str]) -> None:
    """SimPO as a TRL example script would train it: TRL's parser, CPO trainer and config, nothing of prefopt.

    TRL ships dpo.py and kto.py but no CPO script; this is its dpo.py with CPOTrainer in place of DPOTrainer.
    """
    from datasets import load_dataset
    from transformers import AutoTokenizer
    from trl import ModelConfig, ScriptArguments, TrlParser, get_peft_config
    from trl.experimental.cpo import CPOConfig, CPOTrainer

    parser = TrlParser((ScriptArguments, CPOConfig, ModelConfig))
    script_args, training_args, model_args = parser.parse_args_and_config(arguments)
    training_args.model_init_kwargs = {"revision": model_args.model_revision, "dtype": model_args.dtype}
    dataset = load_dataset(script_args.dataset_name, name=script_args.dataset_config)
    trainer = CPOTrainer(
        model=model_args.model_name_or_path,
        args=training_args,
        train_dataset=dataset[script_args.dataset_train_split],
        eval_dataset=dataset[script_args.dataset_test_split] if training_args.eval_strategy != "no" else None,
        processing_class=AutoTokenizer.from_pretrained(model_args.model_name_or_path),
        peft_config=get_peft_config(model_args),
    )
    trainer.train()
    trainer.save_model(training_args.output_dir)


def trl_config(name: str, path: Path) -> Path:
    """The config `training_configs/<name>.yaml` without the keys that only our scripts know (merge, images_dir, ...)."""
    config = yaml.safe_load(training_config(name).read_text())
    # RunArguments extends TRL's DatasetMixtureConfig, whose keys (datasets, ...) TRL's scripts read too.
    ours = {field.name for field in fields(RunArguments)} - {field.name for field in fields(DatasetMixtureConfig)}
    path.write_text(yaml.safe_dump({key: value for key, value in config.items() if key not in ours}))
    return path
