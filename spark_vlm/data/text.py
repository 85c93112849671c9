"""English text helpers shared by the caption generator, the probes, the stage-2 question text and POPE, so
that training text and evaluation text are written by one rule."""
from __future__ import annotations

# Counts in words: scene captions go up to six (a scene's most objects), probes up to ten.
NUMBER_WORDS = ("one", "two", "three", "four", "five", "six", "seven", "eight", "nine", "ten")
WORD_TO_NUMBER: dict[str, int] = {w: i + 1 for i, w in enumerate(NUMBER_WORDS)}


def with_article(phrase: str) -> str:
    """"a red circle", "an orange star" (the vowel-letter rule; every word of our vocabularies follows it)."""
    return ("an " if phrase[:1].lower() in "aeiou" else "a ") + phrase


def object_question(name: str) -> str:
    """The POPE question about one object: "Is there a star in the image?" (training text and probing agree)."""
    return f"Is there {with_article(name)} in the image?"


def question_answer(question: str, answer: str | None = None) -> str:
    """"Question: Is there a star in the image? Answer: yes"; without an answer the text ends at "Answer:" (a probe)."""
    text = f"Question: {question} Answer:"
    return text if answer is None else f"{text} {answer}"
