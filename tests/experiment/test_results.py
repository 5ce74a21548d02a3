"""The results page and the README's headline table, generated from results JSON."""

import json

import pytest

from experiment.results import (
    END_MARKER,
    START_MARKER,
    headline_table,
    render_markdown,
    render_page,
    replace_between_markers,
    update_readme,
)
from experiment.results import main as results_main
from prefopt.errors import UserError

README = f"# Title\n\n## Experiment Results\n\n{START_MARKER}\nold numbers\n{END_MARKER}\n\n## Next section\n"


def metric(mean: float) -> dict:
    return {"mean": mean, "stderr": 0.01}


def evaluation(reward_fn: str | None) -> dict:
    sampled = {
        "reward": metric(0.5),
        "fluency": metric(0.8),
        "sample_length": metric(17.0),
        "distinct_fraction": metric(0.9),
    }
    sampled = sampled if reward_fn else {}
    training = {
        "steps": 250,
        "train_runtime_s": 40.2,
        "tokens_per_second": 4852.4,
        "process_cpu_time_s": 95.6,
        "peak_memory_mb": 650.3,
        "initial_loss": 0.693,
        "final_loss": 0.61,
        "steps_to_stable_loss": 200,
        "epochs_to_stable_loss": 1.6,
    }
    policy = {"win_rate": metric(0.75), "kl": metric(3.25)} if reward_fn else {}
    setup = {"base_model": "models/demo-base", "dataset": "data/demo", "split": "test", "num_pairs": 200}
    setup |= {"reward_fn": reward_fn, "reward_model": None, "fluency_fn": "experiment.review_grammar:is_review"}
    setup |= {"num_prompts": 45, "samples_per_prompt": 8, "seed": 0, "device": "cpu"}
    accuracies = {"implicit_reward_accuracy": metric(0.7), "length_normalised_accuracy": metric(0.6)}
    dpo = {**accuracies, **sampled, **policy, "training": training}
    base = {"implicit_reward_accuracy": metric(0.5), "length_normalised_accuracy": metric(0.475), **sampled}
    if reward_fn:
        base["examples"] = ["The film was dull.", "A plot | twist\nthat works\x17"]
        dpo["examples"] = ["The film was great great great.", "A plot that shines."]
    return {"created": "2026-01-01T00:00:00+00:00", "setup": setup, "base": base, "models": {"dpo_v1": dpo}}


def test_tables_show_each_measure_of_each_model():
    markdown = render_markdown(evaluation("experiment.gold_reward:gold_reward"))
    assert "| model | implicit-reward accuracy | length-normalised accuracy | reward | fluency |" in markdown
    assert "| base (demo-base) | 0.500 ± 0.010 | 0.475 ± 0.010 | 0.500 ± 0.010 | 0.80 ± 0.01 |  |  | 17.0 |" in markdown
    assert (
        "| dpo_v1 | 0.700 ± 0.010 | 0.600 ± 0.010 | 0.500 ± 0.010 | 0.80 ± 0.01 | 0.750 ± 0.010 | 3.2 ± 0.0 |"
        in markdown
    )
    assert "| dpo_v1 | 250 | 40 | 4,852 | 96 | 650 | 0.693 → 0.610 | 200 (1.60) |" in markdown
    assert "| 3.2 ± 0.0 | 17.0 | 0.90 ± 0.01 |" in markdown  # distinct tokens per sample
    assert "fluency `experiment.review_grammar:is_review`" in markdown
    assert "all its pairs tie and its accuracy is exactly 0.5" in markdown


def test_a_reward_model_is_named_as_the_reward():
    results = evaluation(None)
    results["setup"]["reward_model"] = "my-org/reward-model"
    for scores in (results["base"], results["models"]["dpo_v1"]):
        scores |= {"reward": metric(1.5), "fluency": metric(0.8), "sample_length": metric(17.0)}
        scores |= {"distinct_fraction": metric(0.9)}
    results["models"]["dpo_v1"] |= {"win_rate": metric(0.75), "kl": metric(3.25)}
    markdown = render_markdown(results)
    assert "reward model `my-org/reward-model`" in markdown
    assert "| dpo_v1 | 0.700 ± 0.010 | 0.600 ± 0.010 | 1.500 ± 0.010 |" in markdown


def test_samples_table_shows_each_models_examples_on_one_line_each():
    samples = render_markdown(evaluation("experiment.gold_reward:gold_reward")).split("### Samples")[1]
    assert "| model | prompt 1 | prompt 2 |" in samples
    assert "| base (demo-base) | The film was dull. | A plot \\| twist that works\ufffd |" in samples
    assert "| dpo_v1 | The film was great great great. | A plot that shines. |" in samples


def sweep_run(algorithm: str, label: str, seed: int, reward: float, kl: float, paper: bool) -> dict:
    measures = {key: metric(0.6) for key in ("implicit_reward_accuracy", "length_normalised_accuracy", "win_rate")}
    measures |= {"fluency": metric(0.8), "reward": metric(reward), "kl": metric(kl)}
    # Gains over a base at 0.5 (implicit reward) and 0.55 (length-normalised), as `evaluate` pairs them.
    measures |= {"implicit_reward_accuracy_gain": metric(0.1), "length_normalised_accuracy_gain": metric(0.05)}
    run = {"algorithm": algorithm, "label": label, "overrides": {"seed": seed}, "paper_beta": paper, **measures}
    return run | {"training": {"process_cpu_time_s": 30.0}}


def sweep_results() -> dict:
    runs = [sweep_run("dpo", "beta 0.1", 42, 0.6, 10.0, True), sweep_run("dpo", "beta 0.1", 1, 0.7, 20.0, True),
            sweep_run("dpo", "beta 0.1", 2, 0.8, 60.0, True), sweep_run("dpo", "beta 0.3", 42, 0.1, 1.0, False),
            sweep_run("simpo", "beta 2, gamma 1", 42, 0.5, 5.0, True)]  # fmt: skip
    base = {"implicit_reward_accuracy": metric(0.5), "length_normalised_accuracy": metric(0.55)}
    base |= {"reward": metric(0.3), "fluency": metric(0.7)}
    sweep = {"created": "2026-01-01T00:00:00+00:00", "setup": {"seed": 0}, "wall_time_s": 120.0, "seeds": [42, 1, 2],
             "base": base, "runs": runs, "matched_kl": {"kl_values": [5.0, 10.0], "reward": {
                 "dpo": [{"kl": 5.0, "num_seeds": 0, "mean": None, "stdev": None},
                         {"kl": 10.0, "num_seeds": 3, "mean": 0.65, "stdev": 0.05}],
                 "simpo": [{"kl": 5.0, "num_seeds": 1, "mean": 0.5, "stdev": None},
                           {"kl": 10.0, "num_seeds": 0, "mean": None, "stdev": None}]}}}  # fmt: skip
    return sweep


def test_seed_table_gives_the_mean_spread_and_range_over_training_seeds_at_the_papers_beta():
    markdown = render_markdown(evaluation("experiment.gold_reward:gold_reward"), sweep=sweep_results())
    seeds = markdown.split("### Seeds")[1].split("###")[0]
    # DPO's native gain is the implicit reward's, 0.1; SimPO's the length-normalised one's, 0.05.
    assert "| dpo (beta 0.1) | 42, 1, 2 | 0.100 ± 0.000 (0.100–0.100) | 0.600 ± 0.000 (0.600–0.600) |" in seeds
    assert "| 0.700 ± 0.100 (0.600–0.800) |" in seeds and "| 30.0 ± 26.5 (10.0–60.0) |" in seeds  # KL: 10, 20, 60
    assert "| simpo (beta 2, gamma 1) | 42 | 0.050 ± 0.000 (0.050–0.050) |" in seeds
    assert "| base |  |  | 0.500 | 0.550 | 0.300 | 0.70 |  |  |" in seeds
    matched = markdown.split("### The algorithms at matched KL")[1].split("###")[0]
    assert "| algorithm | reward at KL 5.00 | reward at KL 10.00 |" in matched
    assert "| dpo |  | 0.650 ± 0.050 |" in matched and "| simpo | 0.500 (1 of 3 seeds) |  |" in matched
    grid = markdown.split("### Sweep")[1]
    assert "| dpo | beta 0.1 | 0.600 ± 0.000 | 0.600 ± 0.000 | 0.700 ± 0.100 |" in grid
    assert "| dpo | beta 0.3 |" in grid and "5 runs of the v1 configs" in grid and "2.0 min in all" in grid


def test_without_a_reward_there_are_no_sample_columns():
    markdown = render_markdown(evaluation(None))
    assert "| dpo_v1 | 0.700 ± 0.010 | 0.600 ± 0.010 |\n" in markdown
    assert "win rate" not in markdown


def test_readme_section_between_markers_is_replaced_and_the_rest_kept():
    updated = replace_between_markers(README, "| new | table |\n")
    assert updated == README.replace("old numbers", "| new | table |")
    assert replace_between_markers(updated, "| new | table |") == updated  # idempotent


def test_readme_without_markers_is_a_user_error(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text("# Title\n")
    with pytest.raises(UserError, match="results:start"):
        update_readme(readme, "table")
    assert readme.read_text() == "# Title\n"


def test_the_headline_shows_each_algorithm_over_the_seeds_the_trl_defaults_run_and_the_base():
    results = evaluation("experiment.gold_reward:gold_reward")
    results["models"]["simpo_trl_defaults"] = results["models"]["dpo_v1"] | {
        "length_normalised_accuracy_gain": metric(0.02)
    }
    lines = headline_table(results, sweep_results()).splitlines()
    assert lines[0] == "| model | native accuracy gain over base | gold reward | fluency | KL from base (nats) |"
    assert lines[2:] == [
        "| DPO (beta 0.1), seeds 42, 1, 2 | 0.100 ± 0.000 (0.100–0.100) | 0.700 ± 0.100 (0.600–0.800) "
        "| 0.80 ± 0.00 (0.80–0.80) | 30.0 ± 26.5 (10.0–60.0) |",
        "| SimPO (beta 2, gamma 1), seeds 42 | 0.050 ± 0.000 (0.050–0.050) | 0.500 ± 0.000 (0.500–0.500) "
        "| 0.80 ± 0.00 (0.80–0.80) | 5.0 ± 0.0 (5.0–5.0) |",
        "| `simpo_trl_defaults`, one run | 0.020 | 0.500 | 0.80 | 3.2 |",  # the sweep's dpo_v1 is left out
        "| base model |  | 0.300 | 0.70 |  |",  # the sweep's base, on the same samples as its runs
    ]


def test_without_a_sweep_the_headline_shows_every_evaluated_model():
    results = evaluation("experiment.gold_reward:gold_reward")
    results["models"]["dpo_v1"]["implicit_reward_accuracy_gain"] = metric(0.2)
    lines = headline_table(results, None).splitlines()
    assert lines[2:] == ["| `dpo_v1`, one run | 0.200 | 0.500 | 0.80 | 3.2 |", "| base model |  | 0.500 | 0.80 |  |"]


def write_results(results_dir, **loaded: dict) -> None:
    results_dir.mkdir(parents=True)
    for name, content in loaded.items():
        (results_dir / f"{name}.json").write_text(json.dumps(content))


def test_the_command_writes_the_results_page_and_the_readme_headline(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    results = evaluation("experiment.gold_reward:gold_reward")
    results["models"]["dpo_v1"]["implicit_reward_accuracy_gain"] = metric(0.2)
    write_results(tmp_path / "results", results=results, sweep=sweep_results())
    (tmp_path / "README.md").write_text(README)
    results_main([])
    page = (tmp_path / "docs" / "results.md").read_text()
    assert page == render_page("results", results, None, sweep_results())
    assert page.startswith("# Results\n\nGenerated by `python -m experiment.results` from `results/results.json`, ")
    assert "\n## Held-out evaluation\n" in page and "\n## Seeds: " in page and "###" not in page
    readme = (tmp_path / "README.md").read_text()
    assert readme == replace_between_markers(README, headline_table(results, sweep_results()))


def test_other_results_get_their_own_page_and_leave_the_readme_alone(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    write_results(tmp_path / "results" / "qwen", results=evaluation(None))
    (tmp_path / "README.md").write_text(README)
    results_main(["--results_dir", "results/qwen"])
    page = (tmp_path / "results" / "qwen" / "results.md").read_text()
    assert page.startswith("# Results\n\nGenerated by `python -m experiment.results --results_dir results/qwen` ")
    assert (tmp_path / "README.md").read_text() == README and not (tmp_path / "docs").exists()


def test_update_readme_rewrites_the_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    update_readme(readme, render_markdown(evaluation("experiment.gold_reward:gold_reward")))
    text = readme.read_text()
    assert "old numbers" not in text and "| dpo_v1 | 0.700 ± 0.010" in text
    assert text.startswith("# Title\n") and text.endswith("## Next section\n")
    assert [path.name for path in tmp_path.iterdir()] == ["README.md"], "a staging file was left behind"
