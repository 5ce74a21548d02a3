"""The merge suite at a small size: peak memory against the model's size."""

import json
from argparse import Namespace

import pytest

from benchmark.merge_memory import MERGE_BASE, merge_suite
from benchmark.report import machine_description, merge_markdown


def test_merge_suite_reports_peak_memory_as_a_ratio_to_the_model_size(demo_assets, tmp_path):
    small = {**MERGE_BASE, "vocab_size": 4096, "hidden_size": 256, "intermediate_size": 704,
             "num_hidden_layers": 2, "num_attention_heads": 4, "num_key_value_heads": 4}  # fmt: skip
    args = Namespace(model=demo_assets.model_dir, repeats=1)
    result = merge_suite(args, tmp_path, base_config=small)
    parameters = 2 * 4096 * 256 + 2 * (4 * 256 * 256 + 3 * 256 * 704 + 2 * 256) + 256
    assert list(result["summary"]) == ["float32", "bfloat16"]
    for dtype, bytes_per_parameter in (("float32", 4), ("bfloat16", 2)):
        summary = result["summary"][dtype]
        # the safetensors header adds a little
        assert summary["model_bytes"] == pytest.approx(bytes_per_parameter * parameters, rel=0.01)
        # ru_maxrss is a high-water mark: a 6 MB model may not rise above the peak the imports left
        assert summary["peak_rss_bytes"] >= summary["runtime_rss_bytes"] > 0
        assert summary["peak_over_model"] == pytest.approx(summary["peak_rss_bytes"] / summary["model_bytes"])
        merged = tmp_path / f"merged_{dtype}_0"
        assert json.loads((merged / "merge_report.json").read_text())["merged_dtype"] == dtype
        assert (merged / "config.json").is_file() and list(merged.glob("*.safetensors"))
    report = {
        **result, "suite": "merge", "command": "python -m benchmark merge", "created": "now",
        "duration_s": 1.0, "machine": machine_description(),
    }  # fmt: skip
    markdown = merge_markdown(report)
    assert "hidden_size 256" in markdown and "saved in float32 and in bfloat16" in markdown
    assert "| base dtype | model (GiB) |" in markdown and "| bfloat16 | " in markdown
