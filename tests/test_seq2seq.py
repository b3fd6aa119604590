"""Sequence-to-sequence fine-tuning of a tiny causal model on synthetic word-for-word "translation"."""

import json
import random

import pytest
import torch

from budgetlm.cli import main
from train_helpers import lm_meta

EN = ["one", "two", "three", "four", "five", "red", "blue", "cat", "dog", "sun"]
DE = ["eins", "zwei", "drei", "vier", "fuenf", "rot", "blau", "katze", "hund", "sonne"]


def pairs(n, seed):
    rng = random.Random(seed)
    src, tgt = [], []
    for _ in range(n):
        k = rng.sample(range(len(EN)), rng.randint(4, 6))  # BLEU needs 4-grams
        src.append(" ".join(EN[i] for i in k))
        tgt.append(" ".join(DE[i] for i in k))
    return src, tgt


def write_lines(path, lines):
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture(scope="module")
def s2s(tmp_path_factory):
    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("s2s")
    tok = train_tokenizer("wordpiece", [" ".join(EN + DE + ["=>"])] * 20, vocab_size=80)
    save_tokenizer(tok, root / "tok.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=48)
    save_checkpoint(root / "lm", 1, build_model(cfg), lm_meta(cfg), tokenizer_path=root / "tok.json")
    (tr_s, tr_t), (va_s, va_t) = pairs(600, 1), pairs(40, 2)
    return {"root": root, "lm": root / "lm", "tok": tok,
            "train_src": write_lines(root / "train.en", tr_s), "train_tgt": write_lines(root / "train.de", tr_t),
            "val_src": write_lines(root / "val.en", va_s), "val_tgt": write_lines(root / "val.de", va_t)}


def cli(capsys, *args):
    code = main([*args, "--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if code == 0 and cap.out.strip() else None), cap.err


def test_packing_puts_loss_on_targets_only_and_keeps_every_pair():
    from budgetlm.seq2seq import pack

    data = [([1, 2, 3], [7, 8, 0]), ([4], [9, 0]), ([5, 6], [10, 11, 12, 0])]
    x, y = pack(data, T=8, pad=99)
    assert x.shape == y.shape and x.shape[1] == 8
    flat_x = [t for row in x.tolist() for t in row if t != 99]
    assert flat_x == [t for p, q in data for t in p + q]  # every pair, whole, in order
    labels = [t for row in y.tolist() for t in row if t != -100]
    assert labels == [t for _, q in data for t in q]  # exactly the target tokens (with their end-of-text)
    for row_x, row_y in zip(x.tolist(), y.tolist()):  # each label is the next input token
        for k in range(7):
            if row_y[k] != -100:
                assert row_y[k] == row_x[k + 1]


def test_beam_of_one_is_greedy_and_wider_beams_score_at_least_as_well(s2s):
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.seq2seq import beam_search

    torch.manual_seed(3)
    model = build_model(ModelConfig(vocab_size=40, n_layer=2, n_embd=32, n_head=2, max_seq_len=32)).eval()
    prompt = [5, 6, 7]

    def logprob(seq):
        ids = torch.tensor([prompt + seq])
        with torch.no_grad():
            lp = torch.log_softmax(model(ids)[0][0].float(), -1)
        return sum(float(lp[len(prompt) - 1 + i, t]) for i, t in enumerate(seq))

    from budgetlm.generate import generate_batch

    greedy = [s.tokens[0] for s in generate_batch(model, [prompt], 8, 0.0, stop_ids=[0]) if s.tokens[0] is not None]
    assert beam_search(model, [prompt], 1, 8, eot=0, length_penalty=0.0) == [greedy]
    (wide,) = beam_search(model, [prompt], 4, len(greedy), eot=0, length_penalty=0.0)
    if len(wide) == len(greedy):
        assert logprob(wide) >= logprob(greedy) - 1e-5


def test_beam_search_over_a_batch_finds_what_each_sentence_finds_alone():
    """Prompts of different lengths share one left-padded batch (beams rows each; a finished
    sentence's rows leave it) and each gets the hypothesis its own search gets."""
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.seq2seq import beam_search

    torch.manual_seed(6)
    model = build_model(ModelConfig(vocab_size=24, n_layer=2, n_embd=32, n_head=2, max_seq_len=32)).eval()
    with torch.no_grad():
        model.embed.weight[0] *= 3  # a louder end-of-text (id 0, tied): some hypotheses end early
    prompts = [[5, 6, 7], [9], [3, 4, 5, 6, 7, 8, 9], [11, 12], [7, 7, 7, 7]]
    for beams, penalty in [(3, 1.0), (4, 0.0)]:
        alone = [beam_search(model, [p], beams, 10, eot=0, length_penalty=penalty)[0] for p in prompts]
        assert beam_search(model, prompts, beams, 10, eot=0, length_penalty=penalty) == alone
        assert len({len(a) for a in alone}) > 1  # the sentences end at different steps


def test_translate_in_batches_matches_one_sentence_at_a_time(s2s):
    """translate batches beam searches; a source the batch's longest prompt would cut short (the
    context fills up) is searched alone, so every source decodes as it would alone."""
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.seq2seq import translate
    from budgetlm.training.checkpoint import Seq2SeqInfo

    torch.manual_seed(1)
    tok = s2s["tok"]
    model = build_model(ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2,
                                    max_seq_len=16)).eval()
    info = Seq2SeqInfo(template="{source} =>", max_target_tokens=10)
    sources = [" ".join(EN[:k]) for k in (1, 6, 3, 8, 2)]
    lengths = [len(tok.encode(f"{s} =>", add_special_tokens=False).ids) for s in sources]
    assert max(lengths) + 10 > 16 > min(lengths) + 10  # the longest would cut the shortest short
    alone = [translate(model, tok, info, [s], beams=3)[0] for s in sources]
    assert translate(model, tok, info, sources, beams=3, batch_size=12) == alone


def test_finetune_eval_generate(s2s, tmp_path, capsys):
    out = tmp_path / "mt"
    code, res, err = cli(capsys, "finetune", "--task", "seq2seq", "--model", str(s2s["lm"]),
                         "--train", str(s2s["train_src"]), "--train-target", str(s2s["train_tgt"]),
                         "--val", str(s2s["val_src"]), "--val-target", str(s2s["val_tgt"]), "--out", str(out),
                         "--epochs", "25", "--batch-size", "8", "--lr", "3e-3", "--patience", "0",
                         "--device", "cpu", "--precision", "fp32")
    assert code == 0, err
    assert res["metric"] == "bleu" and res["history"][-1]["val_loss"] < res["history"][0]["val_loss"]
    code, ev, err = cli(capsys, "eval", "--model", str(out), "--text", str(s2s["val_src"]), str(s2s["val_tgt"]))
    assert code == 0, err
    assert ev["pairs"] == 40 and ev["bleu"] >= 50.0 and ev["chrf"] > 50.0, ev  # word-for-word is learnable
    import sacrebleu

    hyp = [s["output"] for s in ev["samples"]]
    assert sacrebleu.corpus_bleu(hyp, [[s["reference"] for s in ev["samples"]]]).score >= 0  # sacrebleu's own
    code, beam, err = cli(capsys, "eval", "--model", str(out), "--text", str(s2s["val_src"]), str(s2s["val_tgt"]),
                          "--beams", "3")
    assert code == 0 and beam["beams"] == 3 and beam["bleu"] >= 0.9 * ev["bleu"], err
    # generate applies the stored template to a raw source
    src = s2s["val_src"].read_text().splitlines()[0]
    code, gen, err = cli(capsys, "generate", "--model", str(out), "--prompt", src, "--temperature", "0",
                         "--max-new-tokens", "12")
    assert code == 0, err
    assert gen["text"].strip() == ev["samples"][0]["output"]


def test_bad_pairs_are_one_line_and_nothing_is_written(s2s, tmp_path, capsys):
    short = write_lines(tmp_path / "short.de", ["eins"] * 3)
    holes = write_lines(tmp_path / "holes.de", s2s["train_tgt"].read_text().splitlines()[:599] + [""])
    long_src = write_lines(tmp_path / "long.en", [" ".join(["one"] * 80)] * 600)
    cases = [
        (["--train-target", str(short)], "must be aligned"),
        (["--train-target", str(holes)], "empty target"),
        (["--train-target", str(s2s["train_tgt"]), "--template", "translate:"], "{source}"),
    ]
    for extra, needle in cases:
        code, _, err = cli(capsys, "finetune", "--task", "seq2seq", "--model", str(s2s["lm"]),
                           "--train", str(s2s["train_src"]), *extra, "--out", str(tmp_path / "o"))
        assert code != 0 and needle in err and len(err.strip().splitlines()) == 1, (needle, err)
        assert not (tmp_path / "o").exists()
    code, _, err = cli(capsys, "finetune", "--task", "seq2seq", "--model", str(s2s["lm"]), "--train", str(long_src),
                       "--train-target", str(s2s["train_tgt"]), "--out", str(tmp_path / "o"))
    assert code != 0 and "more than the model's context" in err and not (tmp_path / "o").exists()
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "x").write_text("mine")
    code, _, err = cli(capsys, "finetune", "--task", "seq2seq", "--model", str(s2s["lm"]),
                       "--train", str(s2s["train_src"]), "--train-target", str(s2s["train_tgt"]),
                       "--out", str(tmp_path / "taken"))
    assert code != 0 and (tmp_path / "taken" / "x").read_text() == "mine"
