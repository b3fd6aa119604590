"""Train, load and describe tokenizers (Hugging Face `tokenizers`).

Three kinds, one registry (`TOKENIZERS`):

- `bpe`: byte-level BPE as in GPT-2 (Radford et al. 2019): every byte is in the base alphabet, so no
  text is ever unknown. For causal models.
- `wordpiece`: BERT's WordPiece (Devlin et al. 2019) with BERT pre-tokenisation. For masked models.
  Whitespace and unseen characters are not preserved exactly (unseen ones become `<|unk|>`).
- `byte`: no training; ids 0..255 are the bytes of the UTF-8 text, then the special tokens. It is a
  byte-level BPE model without merges, so it saves and loads like the others. For tiny CPU models.

Every kind carries the same special tokens (`SPECIAL_TOKENS`), so the masked objective and
classification work with any of them; `special_ids(tok)` maps role -> id. `tokenizer.json` is the one
file format: `transformers.PreTrainedTokenizerFast(tokenizer_file=...)` loads it as it is.
"""

from __future__ import annotations

import json
import math
import re
from pathlib import Path
from typing import Callable, Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, normalizers, pre_tokenizers, trainers

from budgetlm.config import BudgetError

# role -> token text. The same six in every kind; `eot` separates documents in the token stream.
SPECIAL_TOKENS: dict[str, str] = {
    "eot": "<|endoftext|>",
    "pad": "<|pad|>",
    "mask": "<|mask|>",
    "cls": "<|cls|>",
    "sep": "<|sep|>",
    "unk": "<|unk|>",
}
_SPECIAL_LIST = list(SPECIAL_TOKENS.values())
_SPECIAL_SET = frozenset(_SPECIAL_LIST)

# vocabulary used when --vocab-size is 0 and the corpus size is unknown (the largest auto choice)
DEFAULT_VOCAB = {"bpe": 8192, "wordpiece": 8192, "byte": 256 + len(SPECIAL_TOKENS)}
# With --vocab-size 0, `prepare` sizes a learned vocabulary to the corpus: one token type per
# AUTO_VOCAB_BYTES bytes of training text, rounded to a power of two, between AUTO_VOCAB_MIN and
# DEFAULT_VOCAB. Every type must be seen often enough to learn its embedding, and on a small corpus a
# large vocabulary also makes the output layer most of a small model's compute: 8,192 types for the
# 1 MB Tiny Shakespeare leave the rarest types seen a handful of times. This gives 2,048 there, 4,096
# for the ~2 MB built-in python-docs corpus, and 8,192 from ~3 MB up (docs/data.md).
AUTO_VOCAB_BYTES = 512
AUTO_VOCAB_MIN = 1024


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's reversible byte -> printable character map (the alphabet of the ByteLevel
    pre-tokenizer): printable Latin-1 bytes map to themselves, the rest to code points from 256 up.
    Needed here to give byte b the id b in the `byte` kind."""
    keep = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1))
    keep += list(range(ord("®"), ord("ÿ") + 1))
    out, extra = {}, 0
    for b in range(256):
        if b in keep:
            out[b] = chr(b)
        else:
            out[b] = chr(256 + extra)
            extra += 1
    return out


def min_vocab(kind: str) -> int:
    """Smallest vocabulary the kind can have: bpe needs all 256 bytes plus the specials; wordpiece
    needs the specials and some characters (its alphabet is added on top when larger)."""
    return {"bpe": 256 + len(SPECIAL_TOKENS), "wordpiece": len(SPECIAL_TOKENS) + 26,
            "byte": DEFAULT_VOCAB["byte"]}[kind]


def auto_vocab(kind: str, train_bytes: int | None) -> int:
    """The vocabulary `--vocab-size 0` means for `kind` and a training text of `train_bytes`."""
    if kind == "byte" or not train_bytes:
        return DEFAULT_VOCAB[kind]
    v = 2 ** round(math.log2(max(1.0, train_bytes / AUTO_VOCAB_BYTES)))
    return int(min(DEFAULT_VOCAB[kind], max(AUTO_VOCAB_MIN, v)))


# The largest vocabulary `prepare` learns: 8x the largest in common use (Gemma's 256k), so that a
# typo (an extra zero or three) is a clear refusal instead of the trainer aborting in Rust.
MAX_VOCAB = 2**21


def check_vocab(kind: str, vocab_size: int) -> int:
    vocab_size = vocab_size or DEFAULT_VOCAB[kind]
    if vocab_size < min_vocab(kind):
        raise BudgetError(
            f"--vocab-size {vocab_size} is too small for a {kind} tokenizer: it needs at least "
            f"{min_vocab(kind)} ({'256 bytes + ' if kind == 'bpe' else ''}{len(SPECIAL_TOKENS)} special tokens)"
        )
    if vocab_size > MAX_VOCAB:
        raise BudgetError(f"--vocab-size {vocab_size:,} is above {MAX_VOCAB:,}: no text needs more tokens "
                          "(large LMs use 32k-256k), and the tokenizer trainer would run out of memory")
    return vocab_size


# --------------------------------------------------------------------------------------------------
# the three kinds


def _train_bpe(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=_SPECIAL_LIST,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),  # all 256 bytes, even unseen ones
        show_progress=False,
    )
    tok.train_from_iterator(texts, trainer=trainer)
    return tok


# Continuation characters are moved into Unicode's private-use plane 15 while the WordPiece
# vocabulary is learned (see _train_wordpiece); characters above U+FFFD stay as they are.
_PUA = 0xF0000
_TO_PUA = {c: _PUA + c for c in range(0xFFFE)}
_WORD = re.compile(r"[^\W_]+")  # letters and digits: BERT splits "_" off as punctuation


def _mark_continuations(text: str) -> str:
    """'playing' -> 'p' + 'laying' shifted into the private-use plane: every non-initial character
    of a word becomes its own symbol, which is what WordPiece's '##' does."""
    return _WORD.sub(lambda m: m.group()[0] + m.group()[1:].translate(_TO_PUA), text)


def _unmark(token: str) -> str:
    if token in _SPECIAL_SET:
        return token
    head = "##" if _PUA <= ord(token[0]) < _PUA + 0xFFFE else ""
    return head + "".join(chr(ord(c) - _PUA) if _PUA <= ord(c) < _PUA + 0xFFFE else c for c in token)


def _train_wordpiece(texts: Iterable[str], vocab_size: int) -> Tokenizer:
    """BERT's WordPiece vocabulary, learned reproducibly.

    tokenizers' own WordPieceTrainer creates its '##x' symbols in hash-map order, and merges of
    equal frequency are then picked in that order, so every run learns a slightly different
    vocabulary. Plain BPE training is deterministic (its alphabet is sorted), so the vocabulary is
    learned by BPE on text whose word-continuation characters are distinct symbols
    (`_mark_continuations`), then mapped back to 'x' / '##x' strings; WordPiece then segments by
    greedy longest match, as in BERT. Words are found with `[^\\W_]+` for this marking, which can
    differ from BertPreTokenizer on rare characters (combining marks): that only changes which
    strings are learned, never how text is encoded."""
    trainer_tok = Tokenizer(models.BPE())
    trainer_tok.normalizer = normalizers.NFC()
    trainer_tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=_SPECIAL_LIST, show_progress=False)
    trainer_tok.train_from_iterator((_mark_continuations(t) for t in texts), trainer=trainer)
    learned = sorted(trainer_tok.get_vocab().items(), key=lambda kv: kv[1])
    vocab: dict[str, int] = {}
    for token, _ in learned:
        vocab.setdefault(_unmark(token), len(vocab))
    tok = Tokenizer(models.WordPiece(vocab=vocab, unk_token=SPECIAL_TOKENS["unk"], max_input_chars_per_word=100))
    tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.BertPreTokenizer()
    tok.decoder = decoders.WordPiece(prefix="##")
    tok.add_special_tokens(_SPECIAL_LIST)  # already in the vocabulary: marks them special
    return tok


def _build_byte(texts: Iterable[str] | None, vocab_size: int) -> Tokenizer:
    """256 byte ids + specials; nothing to learn, `texts` is not read."""
    alphabet = bytes_to_unicode()
    vocab = {alphabet[b]: b for b in range(256)}
    for i, s in enumerate(_SPECIAL_LIST):
        vocab[s] = 256 + i
    tok = Tokenizer(models.BPE(vocab=vocab, merges=[]))
    tok.normalizer = normalizers.NFC()
    # no regex split: words do not matter without merges, and one piece per text is faster
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)
    tok.decoder = decoders.ByteLevel()
    tok.add_special_tokens(_SPECIAL_LIST)  # already in the vocab: marks them special
    return tok


# kind -> (build(texts, vocab_size) -> Tokenizer, needs a pass over the text)
TOKENIZERS: dict[str, tuple[Callable[[Iterable[str] | None, int], Tokenizer], bool]] = {
    "bpe": (_train_bpe, True),
    "wordpiece": (_train_wordpiece, True),
    "byte": (_build_byte, False),
}


def needs_training(kind: str) -> bool:
    if kind not in TOKENIZERS:
        raise BudgetError(f"unknown tokenizer {kind!r}: choose one of {', '.join(TOKENIZERS)}")
    return TOKENIZERS[kind][1]


def train_tokenizer(kind: str, texts_iterator: Iterable[str] | None, vocab_size: int = 0) -> Tokenizer:
    """Train (or build, for `byte`) a tokenizer of `kind` from an iterator of texts.

    The iterator is consumed once, in a streaming way (`train_from_iterator`), so the corpus never
    has to fit in memory. `vocab_size` 0 means the kind's default."""
    needs_training(kind)
    vocab_size = check_vocab(kind, vocab_size)
    build, needs_text = TOKENIZERS[kind]
    texts: Iterable[str] | None = texts_iterator
    if needs_text:
        texts = _nonempty(texts_iterator or [])
    tok = build(texts, vocab_size)
    if needs_text and tok.get_vocab_size() <= len(SPECIAL_TOKENS) + (256 if kind == "bpe" else 0):
        raise BudgetError("the tokenizer learned nothing: the training text is empty")
    return tok


# `--clean` steps that change which characters a word is made of. A tokenizer learned on cleaned text
# has never seen the other forms: uncleaned text at fine-tuning or inference time (cased reviews,
# user prompts) would turn every capitalised word into <|unk|>. So the tokenizer applies these steps
# itself, as BERT's uncased tokenizer lowercases and strips accents, in `clean`'s order.
_NORMALIZING_STEPS: dict[str, list] = {
    "accents": [normalizers.NFD(), normalizers.StripAccents(), normalizers.NFC()],
    "lowercase": [normalizers.Lowercase()],
}


def apply_cleaning(tok: Tokenizer, clean_steps: Iterable[str]) -> list[str]:
    """Make `tok` normalize text the way the named `--clean` steps cleaned its training text (after
    its own NFC); returns the steps it now applies. Idempotent on already-cleaned text."""
    names = set(clean_steps)
    applied = [n for n in _NORMALIZING_STEPS if n in names]  # clean's order: accents, then lowercase
    if applied:
        steps = [normalizers.NFC()] + [s for n in applied for s in _NORMALIZING_STEPS[n]]
        tok.normalizer = normalizers.Sequence(steps)
    return applied


def _nonempty(texts: Iterable[str]) -> Iterator[str]:
    for t in texts:
        if t:
            yield t


# --------------------------------------------------------------------------------------------------
# loading and describing


def ensure_specials(tok: Tokenizer) -> list[str]:
    """Add whichever of our special tokens `tok` lacks (new ids at the end); returns those added."""
    missing = [s for s in _SPECIAL_LIST if tok.token_to_id(s) is None]
    if missing:
        tok.add_special_tokens(missing)
    return missing


def _find_tokenizer_json(path: Path) -> Path | None:
    if path.is_file():
        return path
    for candidate in (path / "tokenizer.json",):
        if candidate.is_file():
            return candidate
    return None


def load_tokenizer(path: str | Path) -> Tokenizer:
    """Load a tokenizer from a `tokenizer.json`, or a folder holding one (a prepared dataset, a run
    folder, a Hugging Face tokenizer folder). A Hugging Face folder without `tokenizer.json` (slow
    tokenizer files only) is converted through `transformers` when it is installed."""
    p = Path(path)
    if not p.exists():
        raise BudgetError(f"tokenizer path not found: {p}")
    found = _find_tokenizer_json(p)
    if found is not None:
        try:
            return Tokenizer.from_file(str(found))
        except Exception as e:  # noqa: BLE001 - any parse failure is a bad input file
            raise BudgetError(f"cannot read tokenizer {found}: {str(e).splitlines()[0]}") from None
    try:
        from transformers import AutoTokenizer

        hf = AutoTokenizer.from_pretrained(str(p), use_fast=True, local_files_only=True)
        backend = getattr(hf, "backend_tokenizer", None)
    except Exception as e:  # noqa: BLE001
        raise BudgetError(f"no tokenizer.json in {p} and transformers cannot load it: {e}") from None
    if backend is None:
        raise BudgetError(f"{p} holds a tokenizer without a fast (tokenizer.json) form")
    return Tokenizer.from_str(backend.to_str())


def special_ids(tok: Tokenizer) -> dict[str, int]:
    """Role ('eot', 'pad', 'mask', 'cls', 'sep', 'unk') -> id. Every tokenizer budgetlm writes has
    all six; BudgetError if one is missing (a foreign tokenizer not passed through `ensure_specials`)."""
    out = {}
    for role, text in SPECIAL_TOKENS.items():
        i = tok.token_to_id(text)
        if i is None:
            raise BudgetError(f"tokenizer lacks the special token {text} ({role})")
        out[role] = i
    return out


def tokenizer_kind(tok: Tokenizer) -> str:
    """Best-effort name of the model type inside a tokenizer.json (for the manifest)."""
    try:
        return json.loads(tok.to_str())["model"]["type"].lower()
    except Exception:  # noqa: BLE001
        return "unknown"


def save_tokenizer(tok: Tokenizer, path: str | Path) -> None:
    """Write `tokenizer.json` atomically (pretty=False keeps big vocabularies small)."""
    from budgetlm import fsio

    fsio.atomic_write_text(path, tok.to_str(pretty=False))
