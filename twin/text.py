"""Text facts shared by the data and evaluation stages: the numbers and named entities of a sentence."""
from __future__ import annotations

import re

MONTHS = "January|February|March|April|May|June|July|August|September|October|November|December"
NUMBER_WORDS = ("one two three four five six seven eight nine ten eleven twelve fifteen twenty thirty forty "
                "fifty hundred thousand").split()


def numbers(text: str) -> set[str]:
    found = set(re.findall(r"\b\d[\d,.]*\b", text))
    found |= {w for w in re.findall(r"[a-z]+", text.lower()) if w in NUMBER_WORDS}
    return {n.rstrip(".,") for n in found}


def entities(text: str, persona_names: list[str]) -> list[str]:
    """Capitalised multi-word names (and single ones not at the sentence start), minus the persona's."""
    names = {n.lower() for n in persona_names}
    found = re.findall(r"\b([A-Z][\w'-]+(?:\s+(?:(?:of|the|and|for|de|van|von)\s+)*[A-Z][\w'-]+)*)", text)
    first = text.split()[0] if text.split() else ""
    out = []
    for e in found:
        e = re.sub(r"^(Today|In|By|After|During|As|The)\s+", "", e.strip())
        if e.lower() in names or any(e.lower() == f"{n}'s" for n in names) or e in MONTHS.split("|"):
            continue
        if e == first.strip(",.") and " " not in e:
            continue
        if e.lower() in ("she", "he", "her", "his", "they", "today", "the", "in", "by", "after", "during", "as"):
            continue
        out.append(e)
    return out


def vocabulary(texts: list[str], persona_names: list[str], limit: int) -> list[str]:
    """The names a person's written material keeps using, most frequent first (ties: first seen),
    after the person's own names: words an ASR model should spell as they do."""
    counts: dict[str, int] = {}
    for text in texts:
        for sentence in re.split(r"(?<=[.!?])\s+|\n+", text):
            for e in entities(sentence, persona_names):
                counts[e] = counts.get(e, 0) + 1
    ranked = sorted(counts, key=lambda e: -counts[e])       # stable: first-seen order among equals
    own = [n for n in persona_names if n]
    return (own + [e for e in ranked if e not in own])[:max(limit, len(own))]
