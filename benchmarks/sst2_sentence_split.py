"""A tuning split of SST-2 *train* that behaves like its dev set, so settings can be chosen without dev.

    python benchmarks/sst2_sentence_split.py --data ../shared/data --out /tmp/tune --sentences 1000
    budgetlm finetune --model RUN --train /tmp/tune/train.jsonl --val /tmp/tune/val.jsonl ...

SST-2's training set holds every labelled phrase of its sentences, so a random held-out part is made of
sub-phrases of training sentences (fine-tuned models score ~0.92 on it, ~0.81 on dev). Here validation
is `--sentences` whole sentences (phrases of 10+ words that are not part of a longer phrase), and
every training phrase that is a sub-phrase of one of them is dropped from training. Prints the split
sizes and TF-IDF + logistic regression accuracy on it for a range of C (the benchmark's baseline).
"""

from __future__ import annotations

import argparse
import csv
import json
import random
from pathlib import Path


def ngrams(text: str) -> set[str]:
    """Every contiguous word sequence of a phrase (its possible sub-phrases), itself included."""
    w = text.split()
    return {" ".join(w[i:j]) for i in range(len(w)) for j in range(i + 1, len(w) + 1)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", default="/work/shared/data", help="folder with sst2/train.tsv")
    ap.add_argument("--out", required=True, help="folder to write train.jsonl and val.jsonl into")
    ap.add_argument("--sentences", type=int, default=1000, help="whole sentences held out for validation")
    ap.add_argument("--min-words", type=int, default=10, help="shortest phrase counted as a sentence")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args()

    with open(Path(args.data) / "sst2/train.tsv", encoding="utf-8", newline="") as fh:
        rows = [(r["sentence"].strip(), r["label"]) for r in csv.DictReader(fh, delimiter="\t", quoting=csv.QUOTE_NONE)]
    long = [(t, y) for t, y in rows if len(t.split()) >= args.min_words]
    inner: set[str] = set()
    for t, _ in long:
        inner |= ngrams(t) - {t}
    sentences = [(t, y) for t, y in long if t not in inner]
    rng = random.Random(args.seed)
    val = rng.sample(sentences, args.sentences)
    held = set().union(*(ngrams(t) for t, _ in val))
    train = [(t, y) for t, y in rows if t not in held]
    rng.shuffle(train)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    for name, part in (("train", train), ("val", val)):
        with open(out / f"{name}.jsonl", "w", encoding="utf-8") as fh:
            fh.writelines(json.dumps({"text": t, "label": y}) + "\n" for t, y in part)
    print(f"{len(sentences)} sentences of {args.min_words}+ words; {len(val)} held out, "
          f"{len(rows) - len(train)} phrases dropped from training, {len(train)} left")

    from sklearn.feature_extraction.text import TfidfVectorizer
    from sklearn.linear_model import LogisticRegression
    from sklearn.metrics import accuracy_score

    vec = TfidfVectorizer(ngram_range=(1, 2), sublinear_tf=True)
    x = vec.fit_transform([t for t, _ in train])
    xv = vec.transform([t for t, _ in val])
    for c in (0.25, 0.5, 1, 2, 4, 8, 16):
        clf = LogisticRegression(C=c, max_iter=3000).fit(x, [y for _, y in train])
        print(f"TF-IDF + LR, C = {c:g}: accuracy {accuracy_score([y for _, y in val], clf.predict(xv)):.3f}")


if __name__ == "__main__":
    main()
