"""The SimPO ablation's measures, from synthetic logs of its two runs."""

import json
import math

import pytest
import yaml

from experiment.ablation import ablation_figure, analyse_run, main
from tests.helpers import write_run


def simpo_run(tmp_path, name: str, beta: float, gamma: float, grad_norm: float) -> str:
    """A config and a logged run of it whose per-token margin grows from 0 to 0.1 nats."""
    margins = [0.1 * step / 9 for step in range(10)]
    write_run(
        tmp_path / "outputs" / name,
        loss=[math.log1p(math.exp(gamma - beta * margin)) for margin in margins],
        grad_norm=[grad_norm] * 10,
        **{"logps/chosen": [-1.5 + margin for margin in margins], "logps/rejected": [-1.5] * 10},
    )
    config = {"beta": beta, "simpo_gamma": gamma, "output_dir": str(tmp_path / "outputs" / name)}
    (tmp_path / f"{name}.yaml").write_text(yaml.safe_dump(config))
    return str(tmp_path / f"{name}.yaml")


def test_measures_of_both_configs(tmp_path):
    configs = [simpo_run(tmp_path, "paper", 2.0, 1.0, 1.0), simpo_run(tmp_path, "defaults", 0.1, 0.5, 0.05)]
    accuracy = {"mean": 0.6, "stderr": 0.03}
    results = {"models": {"paper": {"length_normalised_accuracy": accuracy, "length_normalised_margin": accuracy}}}
    (tmp_path / "results.json").write_text(json.dumps(results))
    output, image = tmp_path / "ablation.json", tmp_path / "ablation.png"
    main(["--configs", *configs, "--results", str(tmp_path / "results.json"), "--output", str(output),
          "--image", str(image)])  # fmt: skip

    ablation = json.loads(output.read_text())
    paper, defaults = ablation["runs"]
    assert defaults["zero_margin_loss"] == pytest.approx(0.9741, abs=1e-4)  # softplus(0.5)
    assert defaults["initial_slope"] == pytest.approx(0.1 / (1 + math.exp(-0.5)))
    assert ablation["predicted_grad_ratio"] == pytest.approx(2 / (1 + math.exp(-1)) / defaults["initial_slope"])
    assert ablation["measured_grad_ratio"] == pytest.approx(20.0)
    for run in (paper, defaults):  # the logged loss is the SimPO loss of the logged margin
        assert run["predicted_final_loss"] == pytest.approx(run["final_loss"], abs=0.01)
    assert paper["heldout_preference_accuracy"] == accuracy and "heldout_preference_accuracy" not in defaults
    assert image.is_file()


def test_figure_draws_each_runs_curves_and_its_zero_margin_loss(tmp_path):
    config = simpo_run(tmp_path, "defaults", 0.1, 0.5, 0.05)
    loss_axes, margin_axes, _, grad_axes = ablation_figure([analyse_run(config, None)]).axes
    label = "defaults (beta 0.1, gamma 0.5)"
    (loss, zero_margin) = loss_axes.get_lines()
    assert loss.get_label() == label and list(loss.get_ydata()) == pytest.approx(
        [math.log1p(math.exp(0.5 - 0.1 * 0.1 * step / 9)) for step in range(10)]
    )
    assert list(zero_margin.get_ydata()) == pytest.approx([math.log1p(math.exp(0.5))] * 2)  # dashed: softplus(gamma)
    assert list(margin_axes.get_lines()[0].get_ydata()) == pytest.approx([0.1 * step / 9 for step in range(10)])
    assert list(grad_axes.get_lines()[0].get_ydata()) == [0.05] * 10
