"""The merge suite at a small size: peak memory against the model's size."""

from argparse import Namespace

import pytest

from benchmark.merge_memory import MERGE_BASE, merge_suite
from benchmark.report import machine_description, merge_markdown


def test_merge_suite_reports_peak_memory_as_a_ratio_to_the_model_size(demo_assets, tmp_path):
    small = {**MERGE_BASE, "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 704,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip
    args = Namespace(model=demo_assets.model_dir, repeats=1)
    result = merge_suite(args, tmp_path, base_config=small)
    summary = result["summary"]
    parameters = 2 * 4096 * 256 + 2 * (4 * 256 * 256 + 3 * 256 * 704 + 2 * 256) + 256
    assert summary["model_bytes"] == pytest.approx(4 * parameters, rel=0.01)  # float32, plus the safetensors header
    # ru_maxrss is a high-water mark: a 6 MB model may not rise above the peak the imports left
    assert summary["peak_rss_bytes"] >= summary["runtime_rss_bytes"] > 0
    assert summary["peak_over_model"] == pytest.approx(summary["peak_rss_bytes"] / summary["model_bytes"])
    merged = tmp_path / "merged0"
    assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    report = {
        **result, "suite": "merge", "command": "python -m benchmark merge", "created": "now",
        "duration_s": 1.0, "machine": machine_description(),
    }  # fmt: skip
    markdown = merge_markdown(report)
    assert "hidden_size 256" in markdown and "| peak / model |" in markdown
