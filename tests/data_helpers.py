"""Small deterministic corpora for the data tests (written into tmp_path, never read from shared)."""

from __future__ import annotations

import random
from pathlib import Path

WORDS = (
    "the a river stone light house garden winter summer quiet little old green bright letter "
    "morning evening road window music paper friend city village story long small river cloud "
    "walked spoke found opened remembered carried listened wrote saw heard kept gave took "
    "slowly softly never always again together under over between across beside before after"
).split()


def sentence(rng: random.Random) -> str:
    words = [rng.choice(WORDS) for _ in range(rng.randint(5, 14))]
    return " ".join(words).capitalize() + rng.choice([".", ".", "!", "?"])


def document(rng: random.Random, sentences: int = 6) -> str:
    return " ".join(sentence(rng) for _ in range(sentences))


def documents(n: int, seed: int = 0, sentences: int = 6) -> list[str]:
    rng = random.Random(seed)
    return [document(rng, sentences) for _ in range(n)]


def write_txt_folder(folder: Path, n: int = 20, seed: int = 0) -> list[str]:
    folder.mkdir(parents=True, exist_ok=True)
    docs = documents(n, seed)
    for i, d in enumerate(docs):
        (folder / f"doc{i:03d}.txt").write_text(d + "\n", encoding="utf-8")
    return docs
