"""The demo task's gold reward: how positive a movie review is, from a fixed word lexicon.

It plays the part of the sentiment classifier in the DPO paper's controlled-sentiment (IMDb) experiment: the
preference pairs are labelled with it, and a trained policy is judged by it. A lexicon keeps it exact,
deterministic and free, and the synthetic reviews of `experiment.demo` draw their sentiment from these same words.

Negation is not handled: the demo reviews never negate a sentiment word, so counting words is exact on them.
"""

import math
import re
from collections.abc import Iterable

POSITIVE_WORDS: tuple[str, ...] = (
    "beautiful", "brilliant", "charming", "clever", "delightful", "engaging", "enjoyable", "excellent", "fantastic",
    "fresh", "funny", "good", "great", "gripping", "heartfelt", "impressive", "inspiring", "lovely", "memorable",
    "moving", "perfect", "powerful", "solid", "stunning", "superb", "terrific", "thrilling", "touching", "witty",
    "wonderful",
)  # fmt: skip

NEGATIVE_WORDS: tuple[str, ...] = (
    "annoying", "awful", "awkward", "bad", "bland", "boring", "cheap", "clumsy", "confusing", "disappointing",
    "dreadful", "dull", "flat", "forgettable", "horrible", "lazy", "lifeless", "mediocre", "messy", "painful",
    "pointless", "poor", "predictable", "shallow", "silly", "stale", "tedious", "terrible", "tiresome", "weak",
)  # fmt: skip

_POSITIVE = frozenset(POSITIVE_WORDS)
_NEGATIVE = frozenset(NEGATIVE_WORDS)
_WORD = re.compile(r"[a-z]+")


def sentiment_score(text: str) -> int:
    """Number of positive words minus number of negative words in `text` (case-insensitive)."""
    words = _WORD.findall(text.lower())
    return sum(word in _POSITIVE for word in words) - sum(word in _NEGATIVE for word in words)


def gold_reward(text: str) -> float:
    """Probability-like positivity in (0, 1): the sigmoid of `sentiment_score`; 0.5 for a neutral text."""
    return 1.0 / (1.0 + math.exp(-sentiment_score(text)))


def gold_reward_batch(texts: Iterable[str]) -> list[float]:
    """`gold_reward` of each text, in order."""
    return [gold_reward(text) for text in texts]
