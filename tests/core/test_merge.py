"""The merge and its check: tied embeddings, broken saves, NaN and infinite weights, bfloat16 rounding, a full disk,
a signal while saving, the model card and `python -m prefopt.merge`.

The adapters here are built in code with a random, non-zero update (as a trained adapter's is), except the bfloat16
one, which a real DPO run trains with a deliberately tiny update.
"""

import errno
import json
import os
import re
import signal
import sys
from pathlib import Path

import pytest
import torch
from huggingface_hub import ModelCard
from peft import LoraConfig, get_peft_model
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from transformers import AutoConfig, AutoModelForCausalLM, AutoTokenizer, PreTrainedModel
from transformers import modeling_utils
from trl import ModelConfig

from prefopt import merge_check
from prefopt.errors import UserError
from prefopt.locking import lock_outputs
from prefopt.merge import main as merge_command
from prefopt.merge import publish_model
from prefopt.merge_check import example_logits, float32_arithmetic
from prefopt.model_card import base_license, hub_id, set_card_section, write_model_card
from tests.helpers import (
    DemoAssets,
    assert_merged_is_base_plus_adapter,
    front_matter,
    run_command,
    run_script,
    start_paused,
    training_args,
)


def make_adapter(base_dir, adapter_dir, **lora):
    """A LoRA adapter of `base_dir` whose update is random and small (scaling 0.25), saved with the tokenizer."""
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_pretrained(base_dir)
    config = LoraConfig(r=4, lora_alpha=1, init_lora_weights=False, **lora)
    get_peft_model(model, config).save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(base_dir).save_pretrained(adapter_dir)
    return adapter_dir


def merge(adapter_dir, merged_dir, base_dir, **kwargs) -> dict:
    return publish_model(
        adapter_dir, merged_dir, ModelConfig(model_name_or_path=str(base_dir), use_peft=True), **kwargs
    )


@pytest.mark.parametrize("changed, unchanged", [("lm_head", "embed_tokens"), ("embed_tokens", "lm_head")])
def test_adapter_on_one_of_tied_embeddings_unties_them(demo_assets, tmp_path, changed, unchanged):
    """The merged model gets two embedding matrices: the one the adapter changed, and the base's shared one."""
    assert AutoConfig.from_pretrained(demo_assets.model_dir).tie_word_embeddings
    adapter = make_adapter(demo_assets.model_dir, tmp_path / "adapter", target_modules=["q_proj", "v_proj", changed])
    report = merge(adapter, tmp_path / "merged", demo_assets.model_dir)

    assert report["word_embeddings"] == "untied"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert not merged.config.tie_word_embeddings
    assert "lm_head.weight" in load_file(tmp_path / "merged" / "model.safetensors")
    base_embeddings = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir).model.embed_tokens.weight
    weights = {"lm_head": merged.lm_head.weight, "embed_tokens": merged.model.embed_tokens.weight}
    assert torch.equal(weights[unchanged], base_embeddings)
    assert not torch.equal(weights[changed], base_embeddings)
    assert_merged_is_base_plus_adapter(tmp_path / "merged", demo_assets.model_dir, adapter)


def test_adapter_that_ties_its_embeddings_stays_tied(demo_assets, tmp_path):
    """ensure_weight_tying gives lm_head and embed_tokens one update: merged once, into the one shared weight."""
    adapter = make_adapter(
        demo_assets.model_dir, tmp_path / "adapter", target_modules=["q_proj", "lm_head"], ensure_weight_tying=True
    )
    report = merge(adapter, tmp_path / "merged", demo_assets.model_dir)

    assert report["word_embeddings"] == "tied"
    merged = AutoModelForCausalLM.from_pretrained(tmp_path / "merged")
    assert merged.config.tie_word_embeddings and merged.lm_head.weight is merged.model.embed_tokens.weight
    assert_merged_is_base_plus_adapter(tmp_path / "merged", demo_assets.model_dir, adapter)


def test_float32_arithmetic_gives_the_logits_of_the_model_upcast_whole(demo_assets, monkeypatch):
    """bfloat16 weights, float32 results: those of the model upcast as a whole, but for float32 rounding (each linear
    layer multiplies by its weight in blocks of rows), where bfloat16 arithmetic is far off; the weights stay bfloat16.

    Measured: 4.8e-7 apart, and 0.027 in bfloat16 arithmetic, on logits up to 11.
    """
    monkeypatch.setattr(merge_check, "BLOCK_BYTES", 4 * 128 * 100)  # blocks of 100 or 50 rows in the demo's layers
    model = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.bfloat16)
    upcast = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.bfloat16).float()
    token_ids = [
        AutoTokenizer.from_pretrained(demo_assets.model_dir)("The acting in this film is brilliant.")["input_ids"]
    ]
    with float32_arithmetic(model):
        (logits,) = example_logits(model, token_ids)
    (expected,) = example_logits(upcast, token_ids)
    (bfloat16_logits,) = example_logits(model, token_ids)
    assert (logits - expected).abs().max() < 1e-5 < 1e-2 < (bfloat16_logits - expected).abs().max()
    assert {parameter.dtype for parameter in model.parameters()} == {torch.bfloat16}


def corrupt_a_tensor(directory):
    weights = load_file(directory / "model.safetensors")
    weights["model.layers.0.mlp.down_proj.weight"] *= 2
    save_file(weights, directory / "model.safetensors", metadata={"format": "pt"})


def tie_in_config(directory):
    config = json.loads((directory / "config.json").read_text())
    (directory / "config.json").write_text(json.dumps({**config, "tie_word_embeddings": True}))


@pytest.mark.parametrize(
    "targets, corrupt, problem",
    [
        ("all-linear", corrupt_a_tensor, "a tensor or the config was saved wrong"),
        (
            ["q_proj", "lm_head"],
            tie_in_config,
            "the saved model's word embeddings should be untied: a tie was broken or created on saving",
        ),
    ],
)
def test_a_broken_save_fails_the_merge_and_keeps_the_earlier_model(
    demo_assets, tmp_path, monkeypatch, targets, corrupt, problem
):
    adapter = make_adapter(demo_assets.model_dir, tmp_path / "adapter", target_modules=targets)
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    (merged_dir / "model.safetensors").write_text("an earlier merged model")
    earlier = {path.name: path.read_bytes() for path in merged_dir.iterdir()}
    adapter_files = {path.name: path.read_bytes() for path in adapter.iterdir()}

    save_pretrained = PreTrainedModel.save_pretrained

    def save_then_corrupt(model, directory, *args, **kwargs):
        save_pretrained(model, directory, *args, **kwargs)
        corrupt(directory)

    monkeypatch.setattr(PreTrainedModel, "save_pretrained", save_then_corrupt)
    with pytest.raises(UserError) as failure:
        merge(adapter, merged_dir, demo_assets.model_dir)
    message = str(failure.value)
    assert message.startswith("merge check failed: ") and "\n" not in message
    assert message.endswith(f"{problem}; the adapter in {adapter} is kept, {merged_dir} is left as it was")
    assert {path.name: path.read_bytes() for path in merged_dir.iterdir()} == earlier
    assert {path.name: path.read_bytes() for path in adapter.iterdir()} == adapter_files
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter", "merged"]  # no staging left behind


def files(directory: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in directory.iterdir()}


@pytest.fixture
def adapter_and_earlier_model(demo_assets, tmp_path):
    """An adapter of the demo base, and an earlier model where its merge goes (`merged`)."""
    adapter = make_adapter(demo_assets.model_dir, tmp_path / "adapter")
    merged_dir = tmp_path / "merged"
    merged_dir.mkdir()
    (merged_dir / "model.safetensors").write_text("an earlier merged model")
    return adapter, merged_dir


def merge_command_line(adapter, merged_dir) -> list[str]:
    return [str(adapter), "--out", str(merged_dir), "--overwrite"]


def refused_merge(adapter: Path, merged_dir: Path) -> str:
    """The message of `python -m prefopt.merge` (its main, in this process) refusing to merge `adapter` into
    `merged_dir`, once checked that the adapter and the earlier model are as they were and nothing else was left."""
    before = {directory: files(directory) for directory in (adapter, merged_dir)}
    with pytest.raises(UserError) as failure:
        merge_command(merge_command_line(adapter, merged_dir))
    assert {directory: files(directory) for directory in before} == before
    assert sorted(path.name for path in merged_dir.parent.iterdir()) == [".merged.lock", "adapter", "merged"]
    return str(failure.value)


def test_nan_in_the_adapter_is_named_and_nothing_is_published(adapter_and_earlier_model):
    adapter, merged_dir = adapter_and_earlier_model
    name = "base_model.model.model.layers.1.self_attn.v_proj.lora_B.weight"
    weights = load_file(adapter / "adapter_model.safetensors")
    weights[name][0, 0] = float("nan")
    save_file(weights, adapter / "adapter_model.safetensors")
    assert refused_merge(adapter, merged_dir) == (
        f"merge check failed: the adapter's '{name}' holds NaN: training diverged; train again with a lower "
        f"learning_rate; the adapter in {adapter} is kept, {merged_dir} is left as it was"
    )


def test_a_weight_beyond_float16_is_named_when_saving_in_float16(demo_assets, tmp_path):
    base_dir = tmp_path / "base"
    model = AutoModelForCausalLM.from_pretrained(demo_assets.model_dir)
    with torch.no_grad():
        model.model.layers[0].mlp.down_proj.weight[0, 0] = 1e5
    model.save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(demo_assets.model_dir).save_pretrained(base_dir)
    adapter = make_adapter(base_dir, tmp_path / "adapter")
    with pytest.raises(UserError) as failure:
        merge(adapter, tmp_path / "merged", base_dir, merged_dtype="float16")
    assert str(failure.value) == (
        "merge check failed: in float16, 'model.layers.0.mlp.down_proj.weight' holds inf (float16 holds at most "
        f"65504: set merged_dtype: bfloat16 or float32); the adapter in {adapter} is kept, {tmp_path / 'merged'} was "
        "not written"
    )
    assert sorted(path.name for path in tmp_path.iterdir()) == ["adapter", "base"]


def disk_full(monkeypatch, merged_dir):
    """The weights' file fills the disk halfway, and safetensors raises what it raises then."""

    def save_file(tensors, filename, metadata=None):
        Path(filename).write_bytes(bytes(4096))
        raise SafetensorError(
            f'Error while serializing: I/O error: No space left on device (os error 28) at path "{filename}"'
        )

    monkeypatch.setattr(modeling_utils, "safe_save_file", save_file)


def read_only(monkeypatch, merged_dir):
    """The directory beside `merged_dir` refuses the staging directory, as a read-only file system does."""
    mkdir = Path.mkdir

    def refused_mkdir(path, *args, **kwargs):
        if path.name.startswith(f".{merged_dir.name}.tmp-"):
            raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
        return mkdir(path, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", refused_mkdir)


@pytest.mark.parametrize(
    "refusal, problem",
    [
        (disk_full, "no space left on its disk, and the save needs 1.74 MB; free some space"),
        (read_only, "'{parent}' is not writable (Read-only file system); make it writable"),
    ],
    ids=["disk full", "read-only"],
)
def test_a_full_disk_or_a_read_only_directory_is_one_line_and_the_earlier_model_stays(
    adapter_and_earlier_model, tmp_path, monkeypatch, refusal, problem
):
    adapter, merged_dir = adapter_and_earlier_model
    refusal(monkeypatch, merged_dir)
    assert refused_merge(adapter, merged_dir) == (
        f"cannot save the model in '{merged_dir}': {problem.format(parent=tmp_path)} or choose another directory; "
        f"the adapter in {adapter} is kept, {merged_dir} is left as it was"
    )


@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_while_saving_removes_the_staging_directory(adapter_and_earlier_model, tmp_path, stop):
    """`python -m prefopt.merge` stopped once the merged weights are in its staging directory."""
    adapter, merged_dir = adapter_and_earlier_model
    before = {directory: files(directory) for directory in (adapter, merged_dir)}
    command = [sys.executable, "-m", "prefopt.merge", *merge_command_line(adapter, merged_dir)]
    process, _ = start_paused(command, "merge saved", tmp_path / "merge.log")
    (staging,) = tmp_path.glob(".merged.tmp-*")
    assert (staging / "model.safetensors").is_file()
    process.send_signal(stop)
    # SystemExit(143) for SIGTERM; for SIGINT, KeyboardInterrupt, with which Python ends by the signal itself
    assert process.wait(timeout=120) == {signal.SIGTERM: 143, signal.SIGINT: -signal.SIGINT}[stop]
    assert {directory: files(directory) for directory in before} == before
    names = sorted(path.name for path in tmp_path.iterdir())
    assert names == [".merged.lock", "adapter", "merge.log", "merge.paused", "merged"]


def test_a_merge_removes_what_killed_merges_left(adapter_and_earlier_model, demo_assets, tmp_path, caplog):
    adapter, merged_dir = adapter_and_earlier_model
    leftovers = [tmp_path / ".merged.old-4242", tmp_path / ".merged.tmp-4243"]
    for path in leftovers:
        path.mkdir()
        (path / "model.safetensors").write_text("what a merge killed by SIGKILL left")
    with caplog.at_level("INFO", logger="prefopt.merge"):
        merge_command(merge_command_line(adapter, merged_dir))
    assert sorted(path.name for path in tmp_path.iterdir()) == [".merged.lock", "adapter", "merged"]
    for path in leftovers:
        assert f"removed {path}, left by a run killed while saving to {merged_dir}" in caplog.messages
    assert_merged_is_base_plus_adapter(merged_dir, demo_assets.model_dir, adapter)


def test_the_staging_directory_of_a_live_run_is_left_alone(adapter_and_earlier_model, tmp_path):
    """A run that holds the lock may be writing its staging directory: a second merge refuses and removes nothing."""
    adapter, merged_dir = adapter_and_earlier_model
    writing = tmp_path / ".merged.tmp-4243"
    writing.mkdir()
    lock_outputs(merged_dir)  # as the live run holds it
    with pytest.raises(UserError, match=re.escape(f"another run is writing to '{merged_dir}'")):
        merge_command(merge_command_line(adapter, merged_dir))
    assert writing.is_dir()


@pytest.fixture(scope="module")
def bfloat16_run(demo_assets, tmp_path_factory):
    """dpo.py on a bfloat16 copy of the demo base, 3 steps at lr 5e-6: an update mostly below bfloat16's resolution."""
    root = tmp_path_factory.mktemp("bfloat16")
    base_dir = root / "base-bf16"
    AutoModelForCausalLM.from_pretrained(demo_assets.model_dir, dtype=torch.bfloat16).save_pretrained(base_dir)
    AutoTokenizer.from_pretrained(demo_assets.model_dir).save_pretrained(base_dir)
    flags = training_args(
        "dpo", DemoAssets(base_dir, demo_assets.data_dir), root, 3,
        "--learning_rate", "5e-6",
        "--eval_strategy", "no",
        "--save_strategy", "no",
        "--logging_steps", "1",
    )  # fmt: skip
    log = run_script("dpo.py", *flags)
    return base_dir, root / "outputs" / "dpo_test", root / "models" / "dpo_test", log.stderr


def test_bfloat16_rounding_of_a_tiny_update_is_reported_and_warned_about(bfloat16_run):
    base_dir, adapter_dir, merged_dir, stderr = bfloat16_run
    report = json.loads((merged_dir / "merge_report.json").read_text())
    assert (report["base_dtype"], report["merged_dtype"]) == ("bfloat16", "bfloat16")
    # Measured: 4-5% of the adapter's effect kept (docs/merge.md).
    assert report["share_kept"] < 0.9
    # Rounding lost most of the update, so the merged model is about as far from base + adapter as the base is:
    # measured 0.94 of the adapter's effect, which moves with the last bits of the update that training left. A wrong
    # merge would be far off this tiny update's effect.
    effect = report["adapter_effect_max_abs_logit_diff"]
    assert 0.5 * effect < report["max_abs_logit_diff"] < 1.5 * effect
    assert "merged_dtype: float32 keeps all of it, at 1.74 MB instead of 0.87 MB" in report["warning"]
    assert f"WARNING prefopt.merge: merge check: {report['warning']}" in stderr
    assert {tensor.dtype for tensor in load_file(merged_dir / "model.safetensors").values()} == {torch.bfloat16}


def test_bfloat16_merge_rounds_once_and_float32_keeps_the_whole_update(bfloat16_run, tmp_path):
    """The bfloat16 weights are the float32 merge's, rounded once: the closest bfloat16 can hold. The command with
    --merged_dtype float32 keeps the update whole."""
    base_dir, adapter_dir, merged_dir, _ = bfloat16_run
    result = run_command(
        [sys.executable, "-m", "prefopt.merge", str(adapter_dir), "--out", str(tmp_path / "float32"),
         "--merged_dtype", "float32"]
    )  # fmt: skip
    report = json.loads((tmp_path / "float32" / "merge_report.json").read_text())
    assert report["base_model"] == str(base_dir)  # from adapter_config.json
    assert report["check_batch"]["source"] == "fixed texts" and report["warning"] is None
    # Measured 99.8%: float32 summation order, against an adapter effect of 0.003.
    assert report["share_kept"] > 0.99
    assert "merge check (float32, 8 examples of fixed texts): max |logit diff|" in result.stderr

    rounded, float32 = (load_file(directory / "model.safetensors") for directory in (merged_dir, tmp_path / "float32"))
    assert rounded.keys() == float32.keys()
    assert all(torch.equal(rounded[name], float32[name].to(torch.bfloat16)) for name in rounded)


def test_merge_command_refuses_an_existing_output(bfloat16_run):
    _, adapter_dir, merged_dir, _ = bfloat16_run
    message = f"--out '{merged_dir}' already exists; pass --overwrite to replace it, or choose another --out"
    with pytest.raises(UserError, match=re.escape(message)):
        merge_command([str(adapter_dir), "--out", str(merged_dir)])


def test_card_sections_are_added_and_replaced(bfloat16_run, tmp_path):
    _, _, merged_dir, _ = bfloat16_run
    (tmp_path / "README.md").write_text((merged_dir / "README.md").read_text())
    set_card_section(tmp_path, "Evaluation", "| measure | value |\n|---|---|\n| accuracy | 0.51 |")
    set_card_section(tmp_path, "Evaluation", "| measure | value |\n|---|---|\n| accuracy | 0.62 |")
    text = (tmp_path / "README.md").read_text()
    assert text.count("## Evaluation") == 1 and "0.62" in text and "0.51" not in text
    assert text.index("## Training") < text.index("## Merge check") < text.index("## Evaluation")
    set_card_section(tmp_path, "Training", "Replaced.")
    text = (tmp_path / "README.md").read_text()
    assert "## Training\n\nReplaced.\n\n## Merge check" in text and "| accuracy | 0.62 |" in text
    assert front_matter(tmp_path / "README.md") == front_matter(merged_dir / "README.md")
    assert (
        ModelCard.load(tmp_path / "README.md").data.base_model
        == ModelCard.load(merged_dir / "README.md").data.base_model
    )


def test_license_comes_from_the_base_models_card(tmp_path):
    (tmp_path / "README.md").write_text("---\nlicense: apache-2.0\n---\n# A base model\n")
    assert base_license(str(tmp_path)) == "apache-2.0"
    assert base_license("prefopt-tests/not-in-the-cache") is None


def test_base_model_is_a_hub_id_never_a_local_path(bfloat16_run, tmp_path):
    """The card's front matter names the base by its hub id, given or read from the hub cache's path; a local copy
    elsewhere is named in the text by its directory's name alone, whatever the `_name_or_path` its config records."""
    snapshot = tmp_path / "hub" / "models--Qwen--Qwen2.5-0.5B-Instruct" / "snapshots" / "7ae557604adf67be50417f59"
    snapshot.mkdir(parents=True)
    copy = tmp_path / "Qwen2.5-0.5B-Instruct"
    copy.mkdir()
    (copy / "config.json").write_text(json.dumps({"_name_or_path": "Qwen/Qwen2.5-0.5B"}))  # its parent's id
    assert hub_id("Qwen/Qwen2.5-0.5B-Instruct") == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_id("gpt2") == "gpt2"
    assert hub_id(str(snapshot)) == "Qwen/Qwen2.5-0.5B-Instruct"
    assert hub_id(str(copy)) is None

    _, _, merged_dir, _ = bfloat16_run
    report = json.loads((merged_dir / "merge_report.json").read_text())
    card = tmp_path / "card"
    for base, base_model, named in (
        (snapshot, "Qwen/Qwen2.5-0.5B-Instruct", "`Qwen/Qwen2.5-0.5B-Instruct` with a LoRA adapter merged"),
        (copy, None, "`Qwen2.5-0.5B-Instruct` (a local model) with a LoRA adapter merged"),
    ):
        write_model_card(card, "mine", {**report, "base_model": str(base)})
        assert front_matter(card / "README.md").get("base_model") == base_model
        text = (card / "README.md").read_text()
        assert text.count(named) == 1 and str(base) not in text
