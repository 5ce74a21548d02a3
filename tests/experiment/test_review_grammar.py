"""The review grammar recognises exactly what it writes: every review it writes, and none of the ways to game it."""

import pytest

from experiment.gold_reward import gold_reward
from experiment.review_grammar import PROMPTS, is_review, synthetic_reviews

REVIEW = "The film was really witty. I thought the plot was gripping and moving."


def test_every_review_the_grammar_writes_is_accepted():
    reviews = synthetic_reviews(5000, seed=7)
    assert all(map(is_review, reviews))
    assert {review.split(" ")[0] for review in reviews} >= {prompt.split(" ")[0] for prompt, _ in PROMPTS}


@pytest.mark.parametrize(
    "text",
    [
        REVIEW[:-1],  # cut short
        REVIEW + " ",
        REVIEW + " Some of the scenes were dull. My dad found it good.",  # four sentences
        "The film was really witty.",  # no tail sentence
        "The film was witty and dull. Some of the scenes were dull.",  # one sentence, two sentiments
        "The film was witty. Some of the scenes were dull. Some of the scenes were good.",  # the same tail twice
        "The film was witty. It is an dull ride for the whole family.",
        "The film was witty great superb wonderful. I thought the plot was great.",  # a list
        "The film was great great great great. I thought the plot was great.",  # a loop
        "The film was plot great soundtrack. I thought the plot was great.",  # salad
        "The acting in this film great. Some of the scenes were great.",  # no verb
    ],
)
def test_what_a_reader_would_reject_is_rejected(text):
    assert not is_review(text)
    assert gold_reward(text) == 0.0


def test_gold_reward_ranks_the_sentiment_of_reviews():
    positive = gold_reward("The film was wonderful and moving. The cast was brilliant.")
    negative = gold_reward("The film was boring and awful. The cast was terrible.")
    neutral = gold_reward("The film was long. Some of the scenes were quiet.")
    assert 0.0 < negative < neutral == 0.5 < positive < 1.0
    assert positive == pytest.approx(1 / (1 + 2.718281828459045**-3))  # three positive words
