"""Every cleaning step of budgetlm.data.clean (one test per registry entry) and their order."""

from __future__ import annotations

import random
import string

import pytest

from budgetlm.config import BudgetError
from budgetlm.data import clean


def run(names, text, whole=True, **params):
    return clean.build_cleaner(names, **params)(text, whole)


# step -> (input, expected output or None for "dropped")
CASES = {
    "html": ("Great film.<br /><br />A <i>must</i> see &amp; more", "Great film.\n\nA must see & more"),
    "accents": ("Café crème à Zürich", "Cafe creme a Zurich"),
    "lowercase": ("Hello World ÉTÉ", "hello world été"),
    "stopwords": ("The cat sat on the mat and it was happy", "cat sat mat happy"),
    "whitespace": ("  a \t\t b  \n\n\n\n  c   ", "a b\n\nc"),
    "short": ("tiny", None),
    "compression": ("spam " * 400, None),
    "dedup": ("same text", "same text"),  # the first copy is kept (the second is tested below)
}


def test_every_step_has_a_case():
    assert set(CASES) == set(clean.CLEAN_STEPS)


@pytest.mark.parametrize("name", sorted(clean.CLEAN_STEPS))
def test_each_step(name):
    text, expected = CASES[name]
    out, why = run([name], text)
    assert out == expected
    assert why == (name if expected is None else None)
    # off unless asked: the same text passes untouched without the step (after NFC/newlines)
    assert run([], text)[0] == text


def test_always_on_normalisation():
    decomposed = "Cafe\u0301\r\nline two\rthree"
    out, _ = run([], decomposed)
    assert out == "Caf\u00e9\nline two\nthree"


def test_dedup_drops_the_second_copy_only():
    c = clean.build_cleaner(["dedup"])
    assert c("one", True) == ("one", None)
    assert c("two", True) == ("two", None)
    assert c("one", True) == (None, "dedup")


def test_short_only_judges_whole_documents():
    assert run(["short"], "tail", whole=False, min_chars=10) == ("tail", None)
    assert run(["short"], "long enough text", min_chars=10)[0] == "long enough text"


def test_compression_keeps_prose_and_drops_random_junk():
    rng = random.Random(0)
    junk = "".join(rng.choice(string.ascii_letters + string.digits + "+/") for _ in range(2000))
    words = "the old river ran past the quiet village where a small green house stood by the road".split()
    prose = " ".join(rng.choice(words) for _ in range(400))
    assert run(["compression"], junk) == (None, "compression")
    assert run(["compression"], prose)[0] == prose
    assert run(["compression"], "short junk xq9Z")[0] == "short junk xq9Z"  # too short to judge


def test_steps_apply_in_registry_order_not_cli_order():
    # whitespace after html: the tag's removal leaves no double space
    out, _ = run(["whitespace", "html"], "a <b>b</b>  <br/>c")
    assert out == "a b\nc"


def test_text_that_cleans_to_nothing_is_dropped():
    assert run(["html"], "<p></p>") == (None, "empty")


def test_bad_options_are_clear_errors():
    with pytest.raises(BudgetError, match="unknown --clean step 'htm'"):
        clean.build_cleaner(["htm"])
    with pytest.raises(BudgetError, match="--min-chars"):
        clean.build_cleaner(["short"], min_chars=-1)
    with pytest.raises(BudgetError, match="--min-compression"):
        clean.build_cleaner(["compression"], min_compression=0.8, max_compression=0.5)
