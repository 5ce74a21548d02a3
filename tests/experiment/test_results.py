"""Results tables from results JSON, and the README section between the results markers."""

import pytest

from prefopt.errors import UserError
from experiment.results import END_MARKER, START_MARKER, render_markdown, replace_between_markers, update_readme

README = f"# Title\n\n## Experiment Results\n\n{START_MARKER}\nold numbers\n{END_MARKER}\n\n## Next section\n"


def metric(mean: float) -> dict:
    return {"mean": mean, "stderr": 0.01}


def evaluation(reward_fn: str | None) -> dict:
    sampled = {"reward": metric(0.5), "sample_length": metric(17.0), "distinct_fraction": metric(0.9)}
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
    setup |= {"reward_fn": reward_fn, "num_prompts": 45, "samples_per_prompt": 8, "seed": 0, "device": "cpu"}
    dpo = {"preference_accuracy": metric(0.6), "logp_margin": metric(0.05), **sampled, **policy, "training": training}
    base = {"preference_accuracy": metric(0.475), "logp_margin": metric(0.0), **sampled}
    if reward_fn:
        base["examples"] = ["The film was dull.", "A plot | twist\nthat works\x17"]
        dpo["examples"] = ["The film was great great great.", "A plot that shines."]
    return {"created": "2026-01-01T00:00:00+00:00", "setup": setup, "base": base, "models": {"dpo_v1": dpo}}


def test_tables_show_each_measure_of_each_model():
    markdown = render_markdown(evaluation("experiment.gold_reward:gold_reward"))
    assert "| base (demo-base) | 0.475 ± 0.010 | 0.000 ± 0.010 | 0.500 ± 0.010 |  |  | 17.0 |" in markdown
    assert "| dpo_v1 | 0.600 ± 0.010 | 0.050 ± 0.010 | 0.500 ± 0.010 | 0.750 ± 0.010 | 3.2 ± 0.0 | 17.0 |" in markdown
    assert "| dpo_v1 | 250 | 40 | 4,852 | 96 | 650 | 0.693 → 0.610 | 200 (1.60) |" in markdown
    assert "| 3.2 ± 0.0 | 17.0 | 0.90 ± 0.01 |" in markdown  # distinct tokens per sample


def test_samples_table_shows_each_models_examples_on_one_line_each():
    samples = render_markdown(evaluation("experiment.gold_reward:gold_reward")).split("### Samples")[1]
    assert "| model | prompt 1 | prompt 2 |" in samples
    assert "| base (demo-base) | The film was dull. | A plot \\| twist that works\ufffd |" in samples
    assert "| dpo_v1 | The film was great great great. | A plot that shines. |" in samples


def test_seed_table_gives_the_mean_spread_and_range_over_training_seeds():
    def run(algorithm, seed, reward, kl):
        measures = {"preference_accuracy": metric(0.5), "reward": metric(reward), "win_rate": metric(0.6)}
        return {"algorithm": algorithm, "overrides": {"seed": seed}, **measures, "kl": metric(kl)}

    seeds = {
        "created": "2026-01-01T00:00:00+00:00", "setup": {"seed": 0}, "wall_time_s": 120.0,
        "runs": [run("dpo", 42, 0.6, 10.0), run("dpo", 1, 0.7, 20.0), run("dpo", 2, 0.8, 60.0),
                 run("kto", 42, 0.5, 5.0)],
    }  # fmt: skip
    markdown = render_markdown(evaluation("experiment.gold_reward:gold_reward"), seeds=seeds)
    table = markdown.split("### Seeds")[1]
    assert "| dpo | 42, 1, 2 | 0.500 ± 0.000 (0.500–0.500) | 0.700 ± 0.100 (0.600–0.800) |" in table
    assert "| 30.0 ± 26.5 (10.0–60.0) |" in table  # KL: stdev of 10, 20, 60
    assert "| kto | 42 | 0.500 ± 0.000 (0.500–0.500) | 0.500 ± 0.000 (0.500–0.500) |" in table
    assert "2.0 min in all" in table


def test_without_a_reward_there_are_no_sample_columns():
    markdown = render_markdown(evaluation(None))
    assert "| dpo_v1 | 0.600 ± 0.010 | 0.050 ± 0.010 |\n" in markdown
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


def test_update_readme_rewrites_the_file(tmp_path):
    readme = tmp_path / "README.md"
    readme.write_text(README)
    update_readme(readme, render_markdown(evaluation("experiment.gold_reward:gold_reward")))
    text = readme.read_text()
    assert "old numbers" not in text and "| dpo_v1 | 0.600 ± 0.010" in text
    assert text.startswith("# Title\n") and text.endswith("## Next section\n")
    assert [path.name for path in tmp_path.iterdir()] == ["README.md"], "a staging file was left behind"
