"""Checks a candidate rewrite must pass, and the verifiers that compare its answer with the
reference's. Each returns the reason a candidate is rejected, or None."""

from __future__ import annotations

import re
import unicodedata

from ftprep.stages.errors import Setting, SettingError

VERIFIERS = ("none", "math", "exact", "regex")
# Phrases a rewrite only writes when it talks about the prompt instead of answering it.
# "my response", "your own response" and a leading "your turn" are the phrases SDFT's own filter
# (sail-sg/sdft) drops distilled responses for.
LEAK_PHRASES = ("reference answer", "your response", "your own response", "my response", "your own answer",
                "now it's your turn", "now it is your turn", "in your own words", "the reference above",
                "the given reference", "original answer")
LEAK_STARTS = ("your turn",)
NUMBER = re.compile(r"-?\d+(?:,\d{3})*(?:\.\d+)?(?:/\d+)?|-?\.\d+")


def final_number(text: str) -> float | None:
    """The last number in the text: where worked answers put their result."""
    matches = NUMBER.findall(text)
    if not matches:
        return None
    value = matches[-1].replace(",", "")
    if "/" in value:
        numerator, denominator = value.split("/")
        return float(numerator) / float(denominator) if float(denominator) else None
    return float(value)


def normalized_text(text: str) -> str:
    text = unicodedata.normalize("NFKC", text).casefold()
    return " ".join(text.split()).strip(" .!?;:,\"'")


def compile_pattern(pattern: str | None, verify: str) -> re.Pattern | None:
    if verify != "regex":
        return None
    if not pattern:
        raise SettingError("{verify} needs {pattern}, e.g. {example}", field="pattern", verify=Setting("verify", "regex"),
                           pattern=Setting("pattern"), example=Setting("pattern", "'#### (\\S+)'"))
    try:
        return re.compile(pattern)
    except re.error as error:
        raise SettingError("{pattern} is not a valid regular expression: {error}", field="pattern", pattern=Setting("pattern"),
                           error=error) from error


def regex_answer(text: str, pattern: re.Pattern) -> str | None:
    matches = list(pattern.finditer(text))
    if not matches:
        return None
    last = matches[-1]
    return normalized_text(last.group(1) if pattern.groups else last.group(0))


def verify_answer(candidate: str, reference: str, verify: str, pattern: re.Pattern | None = None) -> str | None:
    if verify == "none":
        return None
    if verify == "math":
        expected = final_number(reference)
        if expected is None:
            return "unverifiable"  # no number in the reference: nothing to compare against
        got = final_number(candidate)
        return None if got is not None and abs(got - expected) <= 1e-6 * max(1.0, abs(expected)) else "wrong_answer"
    if verify == "exact":
        return None if normalized_text(candidate) == normalized_text(reference) else "wrong_answer"
    expected = regex_answer(reference, pattern)
    if expected is None:
        return "unverifiable"
    return None if regex_answer(candidate, pattern) == expected else "wrong_answer"


def rejection_reason(text: str, finished: bool, reference: str, *, length_ratio: float, scaffolding: list[str],
                     verify: str = "none", pattern: re.Pattern | None = None) -> str | None:
    """Why a candidate cannot replace the reference (the first rule it breaks), or None."""
    if not finished:
        return "token_limit"
    if not text.strip():
        return "empty"
    lowered = text.lower().replace("\u2019", "'")
    if (any(phrase in lowered for phrase in LEAK_PHRASES) or lowered.lstrip().startswith(LEAK_STARTS)
            or any(line in lowered for line in scaffolding)):
        return "leaks_prompt"
    ratio = len(text.strip()) / max(len(reference.strip()), 1)
    if ratio > length_ratio or ratio < 1 / length_ratio:
        return "length_ratio"
    return verify_answer(text, reference, verify, pattern)
