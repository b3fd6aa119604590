"""Text cleaning: a registry of named steps, applied to each piece in a fixed order.

Always on (they only remove ambiguity, never content): Unicode NFC and line endings (`\\r\\n`, `\\r`
-> `\\n`). Everything else is off unless named in `--clean`:

  html        strip HTML tags (`<br />` becomes a newline) and decode entities (`&amp;` -> `&`)
  whitespace  collapse runs of spaces/tabs to one space, trim lines, at most one blank line
  lowercase   lowercase everything
  accents     strip accents (é -> e): NFD, drop combining marks, NFC
  short       drop documents shorter than --min-chars characters
  dedup       drop exact duplicates (of the cleaned text)
  compression drop junk by its zlib compression ratio (see `_compression`)
  stopwords   remove English stop words. This HARMS language-model pre-training (the model never
              sees real sentences); it exists for classic bag-of-words classification pipelines.

Steps return the new text, or None to drop the piece. Each step is built once per run by a factory
that receives only its own parameters (dedup keeps state: the hashes seen so far).
"""

from __future__ import annotations

import hashlib
import html
import re
import unicodedata
import zlib
from typing import Callable

from budgetlm.config import BudgetError

Step = Callable[[str, bool], "str | None"]  # (text, whole document?) -> text or None (drop)

_TAG = re.compile(r"<[^<>]{0,2000}>")
_BR = re.compile(r"<\s*br\s*/?\s*>|<\s*/?\s*p\s*>", re.IGNORECASE)
_SPACES = re.compile(r"[ \t\f\v\u00a0]+")
_BLANKS = re.compile(r"\n{3,}")
_TRAIL = re.compile(r" *\n *")
_WORD = re.compile(r"\b[\w']+\b")

# A small English stop-word list (function words: articles, pronouns, auxiliaries, prepositions).
STOP_WORDS = frozenset("""
a about above after again against all am an and any are as at be because been before being below
between both but by can could did do does doing down during each few for from further had has have
having he her here hers herself him himself his how i if in into is it its itself just me more most
my myself no nor not now of off on once only or other our ours ourselves out over own same she
should so some such than that the their theirs them themselves then there these they this those
through to too under until up very was we were what when where which while who whom why will with
would you your yours yourself yourselves
""".split())


def _newlines(text: str, whole: bool) -> str | None:
    return text.replace("\r\n", "\n").replace("\r", "\n") if "\r" in text else text


def _nfc(text: str, whole: bool) -> str | None:
    # is_normalized is a fast check; most text is already NFC
    return text if unicodedata.is_normalized("NFC", text) else unicodedata.normalize("NFC", text)


def _html(text: str, whole: bool) -> str | None:
    if "<" in text:
        text = _TAG.sub("", _BR.sub("\n", text))
    return html.unescape(text) if "&" in text else text


def _whitespace(text: str, whole: bool) -> str | None:
    text = _SPACES.sub(" ", text)
    text = _TRAIL.sub("\n", text)
    return _BLANKS.sub("\n\n", text).strip(" ") if whole else _BLANKS.sub("\n\n", text)


def _lowercase(text: str, whole: bool) -> str | None:
    return text.lower()


def _accents(text: str, whole: bool) -> str | None:
    if text.isascii():
        return text
    decomposed = unicodedata.normalize("NFD", text)
    return unicodedata.normalize("NFC", "".join(c for c in decomposed if not unicodedata.combining(c)))


def _stopwords(text: str, whole: bool) -> str | None:
    out = _WORD.sub(lambda m: "" if m.group(0).lower() in STOP_WORDS else m.group(0), text)
    return _TRAIL.sub("\n", _SPACES.sub(" ", out)).strip(" ")


def _short(min_chars: int) -> Step:
    def step(text: str, whole: bool) -> str | None:
        # only whole documents are judged: the last block of a long document may be short
        return None if whole and len(text.strip()) < min_chars else text

    return step


def _dedup() -> Step:
    seen: set[bytes] = set()  # 16 bytes per distinct piece: bounded by the corpus's piece count

    def step(text: str, whole: bool) -> str | None:
        h = hashlib.blake2b(text.encode("utf-8"), digest_size=16).digest()
        if h in seen:
            return None
        seen.add(h)
        return text

    return step


def _compression(min_ratio: float, max_ratio: float, min_bytes: int = 512) -> Step:
    """Cramming (Geiping & Goldstein 2023) drops text that its tokenizer compresses badly; the
    tokenizer is trained after cleaning here, so zlib stands in for it. ratio = compressed bytes /
    raw bytes: natural prose sits around 0.35-0.5; repeated boilerplate falls far below (drop if <
    min_ratio), random strings and encoded blobs far above (drop if > max_ratio). Texts under
    `min_bytes` are kept: zlib's fixed overhead makes their ratio meaningless."""

    def step(text: str, whole: bool) -> str | None:
        raw = text.encode("utf-8")
        if len(raw) < min_bytes:
            return text
        ratio = len(zlib.compress(raw, 6)) / len(raw)
        return text if min_ratio <= ratio <= max_ratio else None

    return step


# name -> factory(params) -> step. Order of application is this dict's order, whatever the order
# on the command line: markup goes before whitespace, filters run on the cleaned text.
CLEAN_STEPS: dict[str, Callable[[dict], Step]] = {
    "html": lambda p: _html,
    "accents": lambda p: _accents,
    "lowercase": lambda p: _lowercase,
    "stopwords": lambda p: _stopwords,
    "whitespace": lambda p: _whitespace,
    "short": lambda p: _short(p["min_chars"]),
    "compression": lambda p: _compression(p["min_compression"], p["max_compression"]),
    "dedup": lambda p: _dedup(),
}
ALWAYS: list[Step] = [_newlines, _nfc]


def build_cleaner(names: list[str], min_chars: int = 32, min_compression: float = 0.1,
                  max_compression: float = 0.75) -> Callable[[str, bool], tuple[str | None, str | None]]:
    """A function (text, whole) -> (cleaned text or None, name of the step that dropped it)."""
    unknown = [n for n in names if n not in CLEAN_STEPS]
    if unknown:
        raise BudgetError(f"unknown --clean step {unknown[0]!r}: choose from {', '.join(CLEAN_STEPS)}")
    if min_chars < 0:
        raise BudgetError("--min-chars must be >= 0")
    if not 0 <= min_compression < max_compression:
        raise BudgetError("--min-compression must be >= 0 and below --max-compression")
    params = {"min_chars": min_chars, "min_compression": min_compression, "max_compression": max_compression}
    steps = [(n, CLEAN_STEPS[n](params)) for n in CLEAN_STEPS if n in names]
    pipeline = [("normalize", s) for s in ALWAYS] + steps

    def clean(text: str, whole: bool) -> tuple[str | None, str | None]:
        for name, step in pipeline:
            out = step(text, whole)
            if out is None:
                return None, name
            text = out
        if whole and not text.strip():
            return None, "empty"
        return text, None

    return clean
