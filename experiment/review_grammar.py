"""The demo's review grammar: it writes the synthetic movie reviews, and recognises exactly the reviews it can write.

A review is an opening (the prompt) and a continuation of one to three sentences. Each opening ends where one kind of
sentence head fits: an adjective phrase ("The film was" + " really witty."), a clause ("I watched this film last
night and" + " it felt dull."), or a verb ("The acting in this film" + " seemed superb and moving."). One or two tail
sentences, of different templates, follow the head. Every sentence has one sentiment: its adjectives are all
positive or all negative words, some of them neutral instead.

`is_review(text)` accepts a text exactly when the grammar can write it. The language is finite-state, so one regular
expression holds it, with the rule that two tails differ checked on the match. A text cut short, a list of sentiment
words, a loop, or a sentence that praises and pans at once ("witty and dull") are not reviews.
"""

import functools
import random
import re

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
# Neutral adjectives dilute the sentiment words, so that rewards vary within a tone.
NEUTRAL_WORDS: tuple[str, ...] = (
    "long", "quiet", "simple", "familiar", "loud", "serious", "short", "colorful", "unusual", "dark", "modern",
    "plain", "strange", "gentle", "fast",
)  # fmt: skip

_OPENINGS_BY_HEAD: dict[str, tuple[str, ...]] = {
    "{phrase}.": (
        "The {subject} was",
        "Overall, the {subject} was",
        "Honestly, this {subject} was",
        "I thought the {subject} was",
        "My friends said the {subject} was",
        "To be fair, the {subject} is",
        "For me, this {subject} felt",
        "The ending of the {subject} was",
        "The story of this {subject} is",
    ),
    "{clause} {phrase}.": (
        "I watched this {subject} last night and",
        "We saw the {subject} on Friday and",
        "After the first ten minutes of the {subject},",
        "I went into this {subject} with no expectations and",
        "My sister picked this {subject}, and",
        "I rented the {subject} for the weekend and",
        "By the end of the {subject},",
        "Having seen every {subject} by this director,",
        "We streamed the {subject} at home and",
    ),
    "{verb} {phrase}.": (
        "The acting in this {subject}",
        "The dialogue in the {subject}",
        "The plot of this {subject}",
        "Every scene in the {subject}",
        "The cast of the {subject}",
        "The music in this {subject}",
        "The pacing of the {subject}",
        "The main character in the {subject}",
        "The second half of the {subject}",
    ),
}
_SUBJECTS = (
    "movie", "film", "sequel", "remake", "comedy", "thriller", "drama", "documentary", "western", "musical", "series",
)  # fmt: skip
# Every prompt (an opening with its subject filled in) and the template of the sentence that continues it.
PROMPTS: list[tuple[str, str]] = [
    (opening.format(subject=subject), head)
    for head, openings in _OPENINGS_BY_HEAD.items()
    for opening in openings
    for subject in _SUBJECTS
]
_TAILS = (
    "The {aspect} {verb} {phrase}.",
    "I thought the {aspect} was {phrase}.",
    "Some of the scenes were {phrase}.",
    "Overall it was {a_adjective} {outing}.",
    "My {person} found it {phrase}.",
    "It is {a_adjective} {outing} for the whole family.",
)
_PHRASES = ("{adjective}", "{adverb} {adjective}", "{adjective} and {adjective}")
_NEUTRAL_PROBABILITY = 0.2
# fmt: off
_SLOT_WORDS: dict[str, tuple[str, ...]] = {
    "clause": ("it was", "it felt", "I found it", "the whole thing was", "it turned out", "honestly it was"),
    "verb": ("was", "felt", "seemed", "is", "looked"),
    "adverb": ("very", "really", "quite", "truly", "rather", "so", "pretty", "incredibly"),
    "aspect": (
        "acting", "script", "soundtrack", "ending", "plot", "dialogue", "camera work", "pacing", "cast", "humor",
        "story", "direction", "lead actor", "score",
    ),
    "person": ("friend", "wife", "husband", "brother", "sister", "roommate", "dad", "mom"),
    "outing": ("watch", "evening", "experience", "story", "ride", "night out"),
}
# fmt: on
# Probability that a sentence is positive, for a positive, a negative and a mixed review; uniform over the three
# keeps the base model's samples balanced between sentiments.
_TONES = (0.9, 0.1, 0.5)
_SLOT = re.compile(r"\{(\w+)\}")


# --- Writing --------------------------------------------------------------------------------------------------------
def synthetic_reviews(num_reviews: int, seed: int) -> list[str]:
    """`num_reviews` reviews (opening and continuation), over all openings."""
    rng = random.Random(f"reviews-{seed}")
    return [prompt + _continuation(head, rng) for prompt, head in (rng.choice(PROMPTS) for _ in range(num_reviews))]


def _continuation(head: str, rng: random.Random) -> str:
    """A head sentence then one or two tail sentences, each with a sentiment drawn from one tone for the review."""
    positive_probability = rng.choice(_TONES)
    sentences = [head, *rng.sample(_TAILS, rng.choice((1, 2)))]
    return "".join(" " + _expand(sentence, rng.random() < positive_probability, rng) for sentence in sentences)


def _expand(template: str, positive: bool, rng: random.Random) -> str:
    """Fill each `{slot}` of `template`; adjectives are sentiment words of the given polarity, or neutral."""

    def fill(slot: re.Match) -> str:
        name = slot.group(1)
        if name == "phrase":
            return _expand(rng.choice(_PHRASES), positive, rng)
        if name in ("adjective", "a_adjective"):
            sentiment_words = POSITIVE_WORDS if positive else NEGATIVE_WORDS
            adjective = rng.choice(NEUTRAL_WORDS if rng.random() < _NEUTRAL_PROBABILITY else sentiment_words)
            return f"{_article(adjective)} {adjective}" if name == "a_adjective" else adjective
        return rng.choice(_SLOT_WORDS[name])

    return _SLOT.sub(fill, template)


def _article(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


# --- Recognising ----------------------------------------------------------------------------------------------------
def is_review(text: str) -> bool:
    """Whether the grammar can write `text`, to the character: an opening and a whole continuation, nothing more."""
    match = _review_pattern().fullmatch(text)
    if match is None:
        return False
    tails = [tail for tail in match.group("first", "second") if tail]
    return len({_tail_template(tail) for tail in tails}) == len(tails)


@functools.cache
def _review_pattern() -> re.Pattern:
    heads = "|".join(
        f"(?:{_alternatives(opening.format(subject=subject) for opening in openings for subject in _SUBJECTS)}) "
        f"{_sentence_pattern(head)}"
        for head, openings in _OPENINGS_BY_HEAD.items()
    )
    tail = "|".join(map(_sentence_pattern, _TAILS))
    return re.compile(f"(?:{heads}) (?P<first>{tail})(?: (?P<second>{tail}))?")


@functools.cache
def _tail_patterns() -> tuple[re.Pattern, ...]:
    return tuple(re.compile(_sentence_pattern(template)) for template in _TAILS)


def _tail_template(sentence: str) -> int:
    """The index of the tail template that wrote `sentence`; the templates' fixed words tell them apart."""
    return next(index for index, pattern in enumerate(_tail_patterns()) if pattern.fullmatch(sentence))


def _sentence_pattern(template: str) -> str:
    """A regular expression for the sentences `template` writes: one polarity for all its adjectives."""
    return f"(?:{_slots_pattern(template, POSITIVE_WORDS)}|{_slots_pattern(template, NEGATIVE_WORDS)})"


def _slots_pattern(template: str, sentiment_words: tuple[str, ...]) -> str:
    adjectives = (*sentiment_words, *NEUTRAL_WORDS)

    def slot_pattern(name: str) -> str:
        if name == "phrase":
            return f"(?:{'|'.join(_slots_pattern(phrase, sentiment_words) for phrase in _PHRASES)})"
        if name == "adjective":
            return _alternatives(adjectives)
        if name == "a_adjective":
            return _alternatives(f"{_article(adjective)} {adjective}" for adjective in adjectives)
        return _alternatives(_SLOT_WORDS[name])

    literals = _SLOT.split(template)  # literal text at even indices, slot names at odd ones
    return "".join(slot_pattern(part) if index % 2 else re.escape(part) for index, part in enumerate(literals))


def _alternatives(texts) -> str:
    return f"(?:{'|'.join(map(re.escape, texts))})"
