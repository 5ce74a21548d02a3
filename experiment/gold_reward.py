"""The demo task's gold reward: how positive a movie review is, credited only in text the review grammar accepts.

It plays the part of the sentiment classifier in the DPO paper's controlled-sentiment (IMDb) experiment: the
preference pairs are labelled with it, and a trained policy is judged by it. The sentiment is read from the
grammar's own lexicon, which keeps it exact, deterministic and free. A lexicon alone can be gamed by lists of
sentiment words or word salad; so a text earns a reward only when `experiment.review_grammar` accepts it as a whole
review, and 0, below any review's, otherwise.

Negation is not handled: the grammar never negates a sentiment word, so counting words is exact on its reviews.
"""

import math
import re
from collections.abc import Iterable

from experiment.review_grammar import NEGATIVE_WORDS, POSITIVE_WORDS, is_review

_POSITIVE = frozenset(POSITIVE_WORDS)
_NEGATIVE = frozenset(NEGATIVE_WORDS)
_WORD = re.compile(r"[a-z]+")


def sentiment_score(text: str) -> int:
    """Number of positive words minus number of negative words in `text` (case-insensitive)."""
    words = _WORD.findall(text.lower())
    return sum(word in _POSITIVE for word in words) - sum(word in _NEGATIVE for word in words)


def gold_reward(text: str) -> float:
    """For a review of the grammar, the sigmoid of `sentiment_score`, in (0, 1) and 0.5 when neutral; else 0."""
    return 1.0 / (1.0 + math.exp(-sentiment_score(text))) if is_review(text) else 0.0


def gold_reward_batch(texts: Iterable[str]) -> list[float]:
    """`gold_reward` of each text, in order."""
    return [gold_reward(text) for text in texts]
