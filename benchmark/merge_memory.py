"""The `merge` suite: peak memory and time of `prefopt.merge` on a random Llama of about 1 GiB, each in a fresh process."""

import argparse
import logging
import os
import resource
import statistics
import time
from pathlib import Path

import torch
from peft import LoraConfig, get_peft_model
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM
from trl import ModelConfig

from benchmark.runs import in_fresh_process
from prefopt.merge import merge_adapter

logger = logging.getLogger(__name__)

# --- Merge memory ----------------------------------------------------------------------------------------------------
# A random Llama of 271M parameters: 1.08 GB in float32, enough that the merge's own copies dwarf the Python runtime.
MERGE_BASE = {
    "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16,
    "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 512, "tie_word_embeddings": False,
}  # fmt: skip

MERGE_LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}  # the v1 configs' LoRA


def build_merge_assets(base_dir: Path, adapter_dir: Path, tokenizer_dir: Path, base_config: dict) -> None:
    """The random base in float32 and a LoRA adapter for it whose update is not zero, as a trained one's is not."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**base_config))
    model.save_pretrained(base_dir)
    adapter = get_peft_model(model, LoraConfig(**MERGE_LORA, init_lora_weights=False))
    adapter.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(adapter_dir)  # merge_adapter saves it with the model


def measure_merge(base_dir: Path, adapter_dir: Path, merged_dir: Path) -> dict:
    """`prefopt.merge.merge_adapter` as the scripts call it, in this (fresh) process: its peak RSS and time."""
    runtime_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Python and the libraries, no model yet
    start = time.perf_counter()
    merge_adapter(adapter_dir, merged_dir, ModelConfig(model_name_or_path=str(base_dir), dtype="float32"))
    return {
        "runtime_rss_bytes": runtime_rss,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "merge_s": time.perf_counter() - start,
    }


def merge_suite(args: argparse.Namespace, work_dir: Path, base_config: dict = MERGE_BASE) -> dict:
    """Build the base and an adapter, then merge them --repeats times: the runs and their medians."""
    base_dir, adapter_dir = work_dir / "base", work_dir / "adapter"
    in_fresh_process(build_merge_assets, base_dir, adapter_dir, args.model, base_config)
    model_bytes = sum(path.stat().st_size for path in base_dir.glob("*.safetensors"))
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    runs = []
    for repeat in range(args.repeats):
        load_1min = os.getloadavg()[0]
        run = in_fresh_process(measure_merge, base_dir, adapter_dir, work_dir / f"merged{repeat}")
        runs.append({**run, "repeat": repeat, "load_1min": load_1min})
        logger.info(
            "benchmark: merge %d/%d: peak RSS %.2f GiB", repeat + 1, args.repeats, run["peak_rss_bytes"] / 2**30
        )
    peak = statistics.median(run["peak_rss_bytes"] for run in runs)
    runtime = statistics.median(run["runtime_rss_bytes"] for run in runs)
    return {
        "base_config": base_config,
        "runs": runs,
        "summary": {
            "model_bytes": model_bytes,
            "adapter_bytes": adapter_bytes,
            "runtime_rss_bytes": runtime,
            "peak_rss_bytes": peak,
            "peak_over_model": peak / model_bytes,
            "peak_above_runtime_over_model": (peak - runtime) / model_bytes,
            "budget_bytes": 1.3 * model_bytes + adapter_bytes,  # what a merge that fits in memory may take
            "merge_s": statistics.median(run["merge_s"] for run in runs),
        },
    }
