"""The `merge` suite: peak memory and time of `prefopt.merge` (the merge and its check) on a random Llama of about
1 GiB, saved in float32 and in bfloat16, each merge in a fresh process."""

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
from prefopt.merge import publish_model

logger = logging.getLogger(__name__)

# --- Merge memory ----------------------------------------------------------------------------------------------------
# A random Llama of 271M parameters: 1.08 GB in float32, enough that the merge's own copies dwarf the Python runtime.
MERGE_BASE = {
    "vocab_size": 32000, "hidden_size": 1024, "intermediate_size": 2816, "num_hidden_layers": 16,
    "num_attention_heads": 16, "num_key_value_heads": 16, "max_position_embeddings": 512, "tie_word_embeddings": False,
}  # fmt: skip

MERGE_LORA = {"r": 16, "lora_alpha": 32, "target_modules": "all-linear"}  # the v1 configs' LoRA
MERGE_DTYPES = ("float32", "bfloat16")  # the base's saved dtype, which the merged model keeps


def build_merge_assets(base_dir: Path, adapter_dir: Path, tokenizer_dir: Path, base_config: dict, dtype: str) -> None:
    """The random base in `dtype` and a LoRA adapter for it whose update is not zero, as a trained one's is not."""
    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(**base_config)).to(getattr(torch, dtype))
    model.save_pretrained(base_dir)
    adapter = get_peft_model(model, LoraConfig(**MERGE_LORA, init_lora_weights=False))
    adapter.save_pretrained(adapter_dir)
    AutoTokenizer.from_pretrained(tokenizer_dir).save_pretrained(adapter_dir)  # publish_model saves it with the model


def measure_merge(base_dir: Path, adapter_dir: Path, merged_dir: Path) -> dict:
    """`prefopt.merge.publish_model` as the scripts call it, its check on fixed texts included, in this (fresh)
    process: its peak RSS and time."""
    runtime_rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Python and the libraries, no model yet
    start = time.perf_counter()
    publish_model(
        adapter_dir, merged_dir, ModelConfig(model_name_or_path=str(base_dir), dtype="float32", use_peft=True)
    )
    return {
        "runtime_rss_bytes": runtime_rss,
        "peak_rss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024,
        "merge_s": time.perf_counter() - start,
    }


def merge_suite(args: argparse.Namespace, work_dir: Path, base_config: dict = MERGE_BASE) -> dict:
    """For each of MERGE_DTYPES, build the base and an adapter, then merge them --repeats times: the runs, and their
    medians by dtype."""
    runs, summary = [], {}
    for dtype in MERGE_DTYPES:
        base_dir, adapter_dir = work_dir / f"base_{dtype}", work_dir / f"adapter_{dtype}"
        in_fresh_process(build_merge_assets, base_dir, adapter_dir, args.model, base_config, dtype)
        dtype_runs = []
        for repeat in range(args.repeats):
            load_1min = os.getloadavg()[0]
            run = in_fresh_process(measure_merge, base_dir, adapter_dir, work_dir / f"merged_{dtype}_{repeat}")
            dtype_runs.append({**run, "dtype": dtype, "repeat": repeat, "load_1min": load_1min})
            logger.info(
                "benchmark: merge %s %d/%d: peak RSS %.2f GiB",
                dtype, repeat + 1, args.repeats, run["peak_rss_bytes"] / 2**30,
            )  # fmt: skip
        summary[dtype] = merge_summary(dtype_runs, base_dir, adapter_dir)
        runs += dtype_runs
    return {"base_config": base_config, "runs": runs, "summary": summary}


def merge_summary(runs: list[dict], base_dir: Path, adapter_dir: Path) -> dict:
    """The median peak and time of a base's merges, and the peak against the model's size."""
    model_bytes = sum(path.stat().st_size for path in base_dir.glob("*.safetensors"))
    adapter_bytes = (adapter_dir / "adapter_model.safetensors").stat().st_size
    peak = statistics.median(run["peak_rss_bytes"] for run in runs)
    runtime = statistics.median(run["runtime_rss_bytes"] for run in runs)
    return {
        "model_bytes": model_bytes,
        "adapter_bytes": adapter_bytes,
        "runtime_rss_bytes": runtime,
        "peak_rss_bytes": peak,
        "peak_over_model": peak / model_bytes,
        "peak_above_runtime_over_model": (peak - runtime) / model_bytes,
        "budget_bytes": 1.3 * model_bytes + adapter_bytes,  # what a merge that fits in memory may take
        "merge_s": statistics.median(run["merge_s"] for run in runs),
    }
