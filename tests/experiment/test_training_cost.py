"""The training cost of a run, read from its trainer_state.json and resource_usage.json."""

import json

from experiment.training_cost import training_cost


def test_training_cost_of_a_run(tmp_path):
    history = [{"step": step, "epoch": step / 10, "loss": 1.0 if step < 10 else 0.5} for step in range(2, 21, 2)]
    history.append({"step": 20, "epoch": 2.0, "train_runtime": 10.0})
    (tmp_path / "trainer_state.json").write_text(json.dumps({"global_step": 20, "epoch": 2.0, "log_history": history}))
    usage = {"cpu_time_s": 30.0, "peak_memory_bytes": 100 * 2**20, "memory_measure": "process resident set"}
    (tmp_path / "resource_usage.json").write_text(json.dumps(usage))

    cost = training_cost(tmp_path, tokens_per_epoch=1000)
    assert cost["train_tokens"] == 2000
    assert cost["tokens_per_second"] == 200.0
    assert cost["peak_memory_mb"] == 100.0 and cost["process_cpu_time_s"] == 30.0
    assert cost["steps_to_stable_loss"] == 10 and cost["epochs_to_stable_loss"] == 1.0
