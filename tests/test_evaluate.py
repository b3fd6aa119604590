"""eval: bits-per-byte arithmetic on a hand-computable case; the eval command on tiny runs."""

import json
import math
import sys
import types

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from budgetlm import runtime
from budgetlm.cli import main
from budgetlm.evaluate import bits_per_byte, causal_nll
from train_helpers import TINY, make_dataset, one_thread  # noqa: F401

RT = runtime.Runtime(torch.device("cpu"), "cpu", "fp32", "test")


class Uniform(torch.nn.Module):
    """Predicts every token with probability 1/V: NLL per token is exactly ln V."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx, targets=None):
        return torch.zeros(*idx.shape, self.vocab), None


class Oracle(torch.nn.Module):
    """Knows the rule next = (tok + 1) % V with near certainty."""

    def __init__(self, vocab):
        super().__init__()
        self.vocab = vocab

    def forward(self, idx, targets=None):
        return 50.0 * torch.nn.functional.one_hot((idx + 1) % self.vocab, self.vocab).float(), None


def test_bits_per_byte_by_hand():
    # 101 tokens -> 100 predictions of ln 16 nats = 4 bits each = 400 bits over 50 bytes = 8 bits/byte
    tokens = np.arange(101) % 16
    r = causal_nll(Uniform(16), tokens, seq_len=32, batch_size=2, rt=RT)
    assert r["predicted"] == 100  # windows 0, 32, 64 (32 each) + a tail of 4: every token once
    assert r["loss"] == pytest.approx(math.log(16))
    assert bits_per_byte(r["nll"], 50) == pytest.approx(8.0)
    with pytest.raises(ValueError):
        bits_per_byte(1.0, 0)


def test_a_perfect_model_costs_almost_nothing():
    tokens = np.arange(200) % 16
    r = causal_nll(Oracle(16), tokens, seq_len=50, batch_size=4, rt=RT, max_tokens=150)
    assert r["predicted"] == 149 and r["loss"] < 1e-6


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("eval")
    data = make_dataset(root)
    for name, extra in (("causal", []), ("masked", ["--objective", "masked"])):
        assert main(["train", "--data", str(data), "--out", str(root / name), "--max-steps", "2", *TINY, *extra]) == 0
    return root, data


def evaluate(capsys, *args):
    rc = main(["eval", *args, "--json"])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else None), cap.err


def test_eval_data_and_text_agree(runs, capsys):
    root, data = runs
    rc, a, err = evaluate(capsys, "--model", str(root / "causal"), "--data", str(data))
    assert rc == 0, err
    for key in ("loss", "perplexity", "bits_per_byte", "tokens", "bytes"):
        assert key in a
    assert a["perplexity"] == pytest.approx(math.exp(a["loss"]))
    val_txt = data.parent / "ds_src" / "val.txt"
    rc, b, err = evaluate(capsys, "--model", str(root / "causal"), "--text", str(val_txt))
    assert rc == 0, err
    assert b["bytes"] == len(val_txt.read_bytes()) == a["bytes"]
    assert b["bits_per_byte"] == pytest.approx(a["bits_per_byte"], rel=1e-6)
    summary = json.loads((root / "causal" / "summary.json").read_text())
    assert summary["val_bpb"] == pytest.approx(a["bits_per_byte"], rel=1e-6)  # train's final eval agrees


def test_eval_computes_attention_as_training_did(tmp_path, capsys, monkeypatch):
    """bf16 on a CPU whose attention is measured faster in fp32: training computes attention in fp32,
    and so must `eval --precision bf16`, or it reports another figure for the same checkpoint."""
    monkeypatch.setattr(runtime, "_time_attention", lambda dtype, reps=3: {torch.float32: 1.0, torch.bfloat16: 3.0}[dtype])
    runtime.cpu_attention_fp32.cache_clear()
    data = make_dataset(tmp_path)
    args = ["--data", str(data), "--precision", "bf16"]
    assert main(["train", "--out", str(tmp_path / "r"), "--max-steps", "3", *TINY, *args]) == 0
    capsys.readouterr()
    seen, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: seen.append(q.dtype) or real(q, *a, **k))
    rc, r, err = evaluate(capsys, "--model", str(tmp_path / "r"), *args)
    runtime.cpu_attention_fp32.cache_clear()
    assert rc == 0, err
    assert seen and set(seen) == {torch.float32}
    summary = json.loads((tmp_path / "r" / "summary.json").read_text())
    assert r["bits_per_byte"] == pytest.approx(summary["val_bpb"], rel=1e-6)


def test_eval_masked(runs, capsys):
    root, data = runs
    rc, r, err = evaluate(capsys, "--model", str(root / "masked"), "--data", str(data))
    assert rc == 0, err
    assert r["objective"] == "masked" and 0 <= r["accuracy"] <= 1 and r["loss"] > 0
    rc, r2, _ = evaluate(capsys, "--model", str(root / "masked"), "--data", str(data))
    assert r2["loss"] == r["loss"]  # fixed masking seed


def test_eval_progress_lines_in_a_log(runs, capsys, monkeypatch):
    """Output to a file, not a terminal: plain progress lines with the share of tokens done."""
    monkeypatch.setenv("BUDGETLM_PROGRESS_EVERY", "0")  # a line at every batch
    root, data = runs
    for name in ("causal", "masked"):
        rc, _, err = evaluate(capsys, "--model", str(root / name), "--data", str(data), "--batch-size", "1")
        assert rc == 0, err
        lines = [ln for ln in err.splitlines() if ln.startswith("evaluating: ")]
        assert len(lines) >= 2 and "elapsed" in lines[-1], err


def test_eval_bad_inputs(runs, tmp_path, capsys):
    root, data = runs
    rc, _, err = evaluate(capsys, "--model", str(tmp_path / "none"), "--data", str(data))
    assert rc == 2 and "no model" in err
    other = make_dataset(tmp_path, "bpe", tokenizer="bpe", vocab_size=300)
    rc, _, err = evaluate(capsys, "--model", str(root / "causal"), "--data", str(other))
    assert rc == 2 and "vocabulary" in err
    rc, _, err = evaluate(capsys, "--model", str(root / "causal"))
    assert rc == 2 and "--data" in err
    rc, _, err = evaluate(capsys, "--model", str(root / "causal"), "--text", str(tmp_path / "missing.txt"))
    assert rc == 2 and "cannot read" in err


def test_classifier_runs_are_delegated(runs, tmp_path, capsys, monkeypatch):
    root, _ = runs
    import shutil

    clf = tmp_path / "clf"
    shutil.copytree(root / "causal", clf)
    for ckpt in (clf / "checkpoints").glob("step_*"):
        meta = json.loads((ckpt / "meta.json").read_text())
        meta["kind"], meta["classifier"] = "classifier", {"labels": ["a", "b"], "max_len": 8}
        (ckpt / "meta.json").write_text(json.dumps(meta))
    import budgetlm.classify

    seen = {}

    def fake(runs, path, **kw):
        import numpy as np

        from budgetlm.metrics import classification_metrics

        seen.update(runs=runs, path=path, **kw)
        met = classification_metrics(np.array([0, 1]), np.array([0, 0]), ["a", "b"])
        return {**met, "model": runs, "source": path, "examples": 2, "seconds": 1.0}

    monkeypatch.setattr(budgetlm.classify, "evaluate_classifier", fake)
    rc, r, err = evaluate(capsys, "--model", str(clf), "--text", "labels.tsv")
    assert rc == 0, err
    assert r["accuracy"] == 0.5 and seen["runs"] == [str(clf)] and seen["path"] == "labels.tsv"  # a list: an ensemble
