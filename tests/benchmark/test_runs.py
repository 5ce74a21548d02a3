"""Interrupted benchmarks: resuming measures only the missing runs, and never another benchmark's report."""

import json
from argparse import Namespace
from dataclasses import asdict

import pytest

from benchmark import runs as benchmark_runs
from benchmark.report import resumed
from benchmark.suites import versus_trl_suite
from prefopt.errors import UserError


def test_resume_measures_only_the_runs_an_interrupted_benchmark_lacks(monkeypatch, tmp_path):
    variants, _ = versus_trl_suite(["dpo"])
    measured = []

    def fake_measure(variant, run_dir, args):
        measured.append((variant.key, run_dir.name))
        return {"failed": None, "step_s": 1.0, "cpu_step_s": 1.0, "wall_s": 1.0, "load_1min": 0.0}

    monkeypatch.setattr(benchmark_runs, "measure_run", fake_measure)
    done = [{**asdict(variants[0]), "repeat": 0, "step_s": 2.0}]
    seen = []
    runs = benchmark_runs.measure_interleaved(
        variants, Namespace(repeats=2), tmp_path, done, lambda runs: seen.append(len(runs))
    )
    assert [run["repeat"] for run in runs] == [0, 0, 1, 1]
    assert runs[0]["step_s"] == 2.0  # kept from the interrupted report, not measured again
    assert [key for key, _ in measured] == [variants[1].key, variants[0].key, variants[1].key]
    assert len({run_dir for _, run_dir in measured}) == 3  # every new run in a directory of its own
    assert seen == [2, 3, 4]  # the report is rewritten after every new run


def test_resume_refuses_the_report_of_another_benchmark(tmp_path):
    report = {"suite": "versus_trl", "settings": {"model": "m", "dataset": "d", "max_steps": 30, "repeats": 3}}
    path = tmp_path / "versus_trl.json"
    path.write_text(json.dumps({**report, "command": "python -m benchmark --max_steps 30", "runs": []}))
    assert resumed(path, report)["runs"] == []
    other = {**report, "settings": {**report["settings"], "max_steps": 40}}
    with pytest.raises(UserError, match="is another benchmark .*--max_steps 30.*; choose another --name"):
        resumed(path, other)
    assert resumed(tmp_path / "missing.json", report) == {}
