"""Both held-out preference accuracies, their margins and their paired gains over the base, on known cases."""

from types import SimpleNamespace

import pytest
import torch

from experiment.log_probs import pair_logprobs, tokenize_pairs
from experiment.preference_accuracy import preference_scores


class FavouriteTokenModel(torch.nn.Module):
    """Whatever the input, most of the probability on one token: prefers completions made of it."""

    def __init__(self, vocab_size: int, token_id: int):
        super().__init__()
        self.logits = torch.zeros(vocab_size)
        self.logits[token_id] = 10.0
        self.device = torch.device("cpu")

    def forward(self, input_ids, attention_mask):
        return SimpleNamespace(logits=self.logits.expand(*input_ids.shape, -1))


def test_model_preferring_chosen_everywhere_has_both_accuracies_one(demo_base):
    tokenizer, base_model = demo_base
    (great,) = tokenizer(" great", add_special_tokens=False)["input_ids"]
    model = FavouriteTokenModel(len(tokenizer), great)
    triples = [("The film was", " great great", " dull"), ("The plot of this movie", " great", " awful and dull")]
    prompts, chosen, rejected = map(list, zip(*triples))
    pairs = list(zip(tokenize_pairs(tokenizer, prompts, chosen), tokenize_pairs(tokenizer, prompts, rejected)))
    base_logps, _ = pair_logprobs(base_model, pairs)

    def accuracies(pairs, reference):
        scores = preference_scores(*pair_logprobs(model, pairs), reference)
        return scores["implicit_reward_accuracy"]["mean"], scores["length_normalised_accuracy"]["mean"]

    uniform = torch.zeros_like(base_logps)  # a reference that scores every response alike
    assert accuracies(pairs, uniform) == (1.0, 1.0)
    assert accuracies([(rejected, chosen) for chosen, rejected in pairs], uniform) == (0.0, 0.0)
    assert accuracies([(chosen, chosen) for chosen, _ in pairs], uniform) == (0.5, 0.5)


def test_both_accuracies_on_known_log_probabilities():
    logps = torch.tensor([[-10.0, -12.0], [-20.0, -12.0], [-6.0, -9.0]])  # (chosen, rejected), summed
    counts = torch.tensor([[5, 4], [10, 3], [2, 3]])
    base_logps = torch.tensor([[-11.0, -12.0], [-19.0, -14.0], [-6.0, -9.0]])
    scores = preference_scores(logps, counts, base_logps)
    # Implicit rewards chosen - rejected: (1 - 0), (-1 - 2), (0 - 0): a win, a loss and a tie.
    assert scores["implicit_reward_accuracy"]["mean"] == 0.5
    assert scores["implicit_reward_margin"]["mean"] == pytest.approx((1 - 3 + 0) / 3)
    # Per token: -2 against -3, -2 against -4, -3 against -3: two wins and a tie.
    assert scores["length_normalised_accuracy"]["mean"] == pytest.approx(2.5 / 3)
    assert scores["length_normalised_margin"]["mean"] == pytest.approx((1 + 2 + 0) / 3)


def test_accuracy_gains_are_paired_differences_with_the_base_on_the_same_pairs():
    logps = torch.tensor([[-1.0, -2.0], [-3.0, -2.0], [-1.0, -2.0], [-1.0, -2.0]])  # one token per response
    base_logps = torch.tensor([[-2.0, -1.0], [-3.0, -2.0], [-1.0, -2.0], [-2.0, -2.0]])
    scores = preference_scores(logps, torch.ones_like(logps), base_logps)
    # Per token, the model wins, loses, wins, wins; the base loses, loses, wins, ties: differences 1, 0, 0, 0.5.
    assert scores["length_normalised_accuracy"]["mean"] == 0.75
    assert scores["length_normalised_accuracy_gain"]["mean"] == 0.375
    assert scores["length_normalised_accuracy_gain"]["stderr"] == pytest.approx((0.6875 / 3 / 4) ** 0.5)
    # Implicit-reward margins 2, 0, 0, 1 against the base's ties at 0.5: differences 0.5, 0, 0, 0.5.
    assert scores["implicit_reward_accuracy_gain"] == pytest.approx({"mean": 0.25, "stderr": (1 / 12 / 4) ** 0.5})


def test_the_base_against_itself_ties_every_pair_on_the_implicit_reward():
    logps = torch.tensor([[-10.0, -12.0], [-20.0, -12.0]])
    scores = preference_scores(logps, torch.ones_like(logps), logps)
    assert scores["implicit_reward_accuracy"] == {"mean": 0.5, "stderr": 0.0}
    assert scores["implicit_reward_margin"] == {"mean": 0.0, "stderr": 0.0}
    for measure in ("implicit_reward", "length_normalised"):
        assert scores[f"{measure}_accuracy_gain"] == {"mean": 0.0, "stderr": 0.0}
