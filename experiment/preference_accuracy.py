"""Held-out preference accuracy: how often the chosen response scores above the rejected one, on the implicit
reward (DPO's and KTO's) and on the length-normalised log-probability (SimPO's), each against the base model's."""

import torch

from experiment.standard_error import mean_stderr


def outcomes(margins: torch.Tensor) -> list[float]:
    """Per pair: 1 where the margin (chosen minus rejected) is positive, 0 where negative, 0.5 on a tie."""
    return ((margins > 0).float() + 0.5 * (margins == 0).float()).tolist()


def preference_scores(logps: torch.Tensor, counts: torch.Tensor, base_logps: torch.Tensor) -> dict:
    """Both held-out preference accuracies, with their margins, from `pair_logprobs` of a model and of the base.

    The implicit reward is the summed log-ratio to the base (DPO's and KTO's, without beta); the length-normalised
    score is the mean per-token log-probability (SimPO's, without beta). Each `*_accuracy_gain` is the accuracy minus
    the base's on the same pairs, with the standard error of that paired difference: smaller than either accuracy's,
    since both models face the same pairs.
    """
    per_token, base_per_token = logps / counts.clamp(min=1), base_logps / counts.clamp(min=1)
    implicit_margins = _chosen_minus_rejected(logps - base_logps)
    measures = {
        # The base's implicit reward is 0 on every response: every pair ties.
        "implicit_reward": (implicit_margins, torch.zeros_like(implicit_margins)),
        "length_normalised": (_chosen_minus_rejected(per_token), _chosen_minus_rejected(base_per_token)),
    }
    scores = {}
    for name, (margins, base_margins) in measures.items():
        accuracy, base_accuracy = outcomes(margins), outcomes(base_margins)
        scores[f"{name}_accuracy"] = mean_stderr(accuracy)
        scores[f"{name}_accuracy_gain"] = mean_stderr([ours - base for ours, base in zip(accuracy, base_accuracy)])
        scores[f"{name}_margin"] = mean_stderr(margins.tolist())
    return scores


def _chosen_minus_rejected(scores: torch.Tensor) -> torch.Tensor:
    return scores[:, 0] - scores[:, 1]
