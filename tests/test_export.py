"""`budgetlm export --format hf`: plain transformers loads every model kind with exact logits.

Run: .venv/bin/python -m pytest tests/test_export.py -q
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from budgetlm.cli import main  # noqa: E402
from budgetlm.config import to_dict  # noqa: E402
from budgetlm.models.config import ModelConfig  # noqa: E402
from budgetlm.models.heads import SequenceClassifier  # noqa: E402
from budgetlm.models.transformer import Transformer  # noqa: E402

TEXTS = ["the cat sat on the mat", "a dog", "it was the best of times, it was the worst of times"]


@pytest.fixture(scope="module")
def tokenizer_file(tmp_path_factory):
    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer

    corpus = ["the cat sat on the mat. the dog sat on the log. it was the best of times."] * 50
    tok = train_tokenizer("bpe", iter(corpus), vocab_size=300)
    path = tmp_path_factory.mktemp("tok") / "tokenizer.json"
    save_tokenizer(tok, path)
    return path


def _cfg(vocab: int, causal: bool, **kw) -> ModelConfig:
    return ModelConfig(vocab_size=vocab, n_layer=2, n_embd=32, n_head=2, max_seq_len=64, causal=causal, **kw)


def _save(tmp_path, name, model, meta, tokenizer_file) -> Path:
    from budgetlm.training.checkpoint import save_checkpoint

    from budgetlm.training.checkpoint import CheckpointMeta, ClassifierInfo

    kind = "classifier" if "labels" in meta else "lm"
    info = ClassifierInfo(meta["labels"], meta["max_len"], pooling=meta["pooling"]) if kind == "classifier" else None
    save_checkpoint(tmp_path / name, 1, model, CheckpointMeta(kind=kind, model_config=to_dict(model.cfg), classifier=info),
                    tokenizer_path=tokenizer_file)
    return tmp_path / name


def _vocab(tokenizer_file) -> int:
    from budgetlm.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_file).get_vocab_size()


def _sharpen(m):
    with torch.no_grad():  # larger weights than the 0.02 init: logits that differ, greedy paths that vary
        for p in m.parameters():
            if p.ndim == 2:
                p.mul_(10)
    return m.eval()


def _export(capsys, run, out, *extra) -> dict:
    assert main(["export", "--model", str(run), "--out", str(out), "--json", *extra]) == 0
    result = json.loads(capsys.readouterr().out)
    assert result["max_abs_logit_diff"] < 1e-4
    return result


def _our_ids(tokenizer_file, text):
    from budgetlm.data.tokenizer import load_tokenizer

    return load_tokenizer(tokenizer_file).encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("tie", [True, False])
def test_causal_lm_export_logits_tokenizer_and_greedy_generation(tmp_path, capsys, tokenizer_file, tie):
    from budgetlm.generate import generate_tokens

    torch.manual_seed(0)
    m = _sharpen(Transformer(_cfg(_vocab(tokenizer_file), True, tie_embeddings=tie)))
    run = _save(tmp_path, "run", m, {}, tokenizer_file)
    out = tmp_path / "hf"
    res = _export(capsys, run, out)
    assert res["architecture"] == "LlamaForCausalLM" and "tokenizer.json" in res["files"]

    hf = transformers.AutoModelForCausalLM.from_pretrained(out).eval()
    tok = transformers.AutoTokenizer.from_pretrained(out)
    assert type(hf).__name__ == "LlamaForCausalLM"
    ids = tok(TEXTS[2], return_tensors="pt").input_ids
    assert ids[0].tolist() == _our_ids(tokenizer_file, TEXTS[2])  # same ids, no added specials
    with torch.no_grad():
        assert (hf(ids).logits - m(ids)[0]).abs().max() < 1e-4

    # Greedy generation through transformers equals budgetlm's engine.
    eos = tok.eos_token_id
    assert eos == tok.convert_tokens_to_ids("<|endoftext|>") == hf.config.eos_token_id
    prompt = ids[:, :6]
    with torch.no_grad():
        theirs = hf.generate(prompt, max_new_tokens=20, do_sample=False)[0, 6:].tolist()
    ours = list(generate_tokens(m, prompt[0].tolist(), 20, temperature=0, stop_ids=[eos]))
    if eos in theirs:  # transformers keeps the end token, budgetlm does not yield it
        theirs = theirs[: theirs.index(eos)]
    assert ours == theirs and len(set(ours)) > 1


def test_masked_lm_export(tmp_path, capsys, tokenizer_file):
    torch.manual_seed(0)
    m = _sharpen(Transformer(_cfg(_vocab(tokenizer_file), False)))
    run = _save(tmp_path, "mlm", m, {}, tokenizer_file)
    res = _export(capsys, run, tmp_path / "hf")
    assert res["architecture"] == "ModernBertForMaskedLM"
    hf = transformers.AutoModelForMaskedLM.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert tok.mask_token == "<|mask|>" and tok.pad_token == "<|pad|>"
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours, _ = m(batch.input_ids, attention_mask=batch.attention_mask)
        theirs = hf(**batch).logits
    real = batch.attention_mask.bool()
    assert (ours - theirs)[real].abs().max() < 1e-4


@pytest.mark.parametrize("causal,pooling", [(True, "last"), (False, "cls"), (False, "mean")])
def test_classifier_export(tmp_path, capsys, tokenizer_file, causal, pooling):
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.labelled import BudgetlmEncoder

    torch.manual_seed(0)
    clf = _sharpen(SequenceClassifier(_cfg(_vocab(tokenizer_file), causal), 3, pooling=pooling))
    labels = ["neg", "neutral", "pos"]
    meta = {"model_kind": "classifier", "backbone": "budgetlm", "num_labels": 3, "labels": labels,
            "pooling": pooling, "max_len": 64}
    run = _save(tmp_path, "clf", clf, meta, tokenizer_file)
    res = _export(capsys, run, tmp_path / "hf")
    assert res["auto_class"] == "AutoModelForSequenceClassification"

    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    assert hf.config.id2label == dict(enumerate(labels))
    # AutoTokenizer adds the same special tokens as fine-tuning's encoder did.
    enc = BudgetlmEncoder(load_tokenizer(tokenizer_file), causal, 64)
    seqs, _ = enc(TEXTS[:2], ["a pair", "another one"])
    assert tok(TEXTS[:2], ["a pair", "another one"]).input_ids == [list(s) for s in seqs]
    batch = tok(TEXTS, padding=True, return_tensors="pt")
    with torch.no_grad():
        ours, _ = clf(batch.input_ids, attention_mask=batch.attention_mask)
        theirs = hf(**batch).logits
    assert ours.shape == theirs.shape == (3, 3)
    assert (ours - theirs).abs().max() < 1e-4


def test_bfloat16_export_loads(tmp_path, capsys, tokenizer_file):
    m = Transformer(_cfg(_vocab(tokenizer_file), True)).eval()
    run = _save(tmp_path, "run", m, {}, tokenizer_file)
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "hf"), "--dtype", "bfloat16", "--json"]) == 0
    hf = transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf")
    assert hf.model.embed_tokens.weight.dtype == torch.bfloat16


def _tree(root: Path) -> dict:
    return {str(p.relative_to(root)): p.read_bytes() for p in sorted(root.rglob("*")) if p.is_file()}


def test_overwrite_replaces_only_an_earlier_export(tmp_path, capsys, tokenizer_file):
    m = Transformer(_cfg(_vocab(tokenizer_file), True)).eval()
    run = _save(tmp_path, "run", m, {}, tokenizer_file)
    out = tmp_path / "hf"
    assert main(["export", "--model", str(run), "--out", str(out), "--no-verify"]) == 0
    assert main(["export", "--model", str(run), "--out", str(out), "--no-verify"]) == 2
    assert "--overwrite" in capsys.readouterr().err
    (out / "config.json").write_text("stale")
    assert main(["export", "--model", str(run), "--out", str(out), "--overwrite", "--no-verify"]) == 0
    assert (out / "config.json").read_text() != "stale"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []


@pytest.mark.parametrize("overwrite", [[], ["--overwrite"]])
def test_never_touches_what_export_did_not_make(tmp_path, capsys, tokenizer_file, overwrite):
    """A user's folder, a plain file, the run itself (or the run around a checkpoint): refused, unchanged."""
    m = Transformer(_cfg(_vocab(tokenizer_file), True)).eval()
    run = _save(tmp_path, "run", m, {}, tokenizer_file)
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "keep.txt").write_text("mine")
    (tmp_path / "file.txt").write_text("a file")
    ckpt = next((run / "checkpoints").glob("step_*"))
    before = _tree(tmp_path)
    for model, out, needle in [(run, mine, "choose another output"), (run, tmp_path / "file.txt", "is a file"),
                               (run, run, "is the input"), (ckpt, run, "contains the input"),
                               (run, run / "hf", "lies inside the input")]:
        assert main(["export", "--model", str(model), "--out", str(out), "--no-verify", *overwrite]) == 2
        err = capsys.readouterr().err
        assert needle in err and err.count("\n") == 1, err
    assert _tree(tmp_path) == before


def test_an_empty_folder_is_a_fine_output(tmp_path, capsys, tokenizer_file):
    m = Transformer(_cfg(_vocab(tokenizer_file), True)).eval()
    run = _save(tmp_path, "run", m, {}, tokenizer_file)
    (tmp_path / "hf").mkdir()
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "hf"), "--no-verify", "--json"]) == 0
    assert ".budgetlm.json" not in json.loads(capsys.readouterr().out)["files"]


def test_every_export_flag_shows_its_default():
    import argparse

    from budgetlm.commands.export import add_arguments

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    for action in parser._actions:
        if action.dest != "help":
            assert "(default: " in action.help, action.dest


def test_bad_run_dirs_give_one_line_errors(tmp_path, capsys, tokenizer_file):
    out = tmp_path / "hf"
    assert main(["export", "--model", str(tmp_path / "missing"), "--out", str(out)]) == 2
    assert capsys.readouterr().err.count("\n") == 1
    m = Transformer(_cfg(_vocab(tokenizer_file), True))
    run = _save(tmp_path, "run", m, {}, tokenizer_file)
    ckpt = next((run / "checkpoints").glob("step_*"))
    (ckpt / "model.safetensors").write_bytes(b"not safetensors")
    assert main(["export", "--model", str(run), "--out", str(out)]) == 2
    err = capsys.readouterr().err
    assert "corrupt" in err and err.count("\n") == 1
    (ckpt / "meta.json").write_text("{")
    assert main(["export", "--model", str(run), "--out", str(out)]) == 2
    assert not out.exists()


def test_failed_verification_writes_nothing(tmp_path, monkeypatch, tokenizer_file):
    import budgetlm.export as export
    from budgetlm.config import BudgetError

    m = Transformer(_cfg(_vocab(tokenizer_file), False)).eval()
    monkeypatch.setattr(export, "verify_export", lambda model, out: 1.0)
    with pytest.raises(BudgetError, match="differ"):
        export.export_hf(m, tmp_path / "hf", tokenizer_file)
    assert list(tmp_path.iterdir()) == []


def test_classifier_finetuned_from_a_transformers_model_exports(tmp_path):
    """finetune --model HF_FOLDER wraps a transformers model; export writes it back as it is."""
    from budgetlm.export import export_hf
    from budgetlm.finetuning import HFClassifier

    config = transformers.BertConfig(vocab_size=50, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                                     intermediate_size=32, max_position_embeddings=32, num_labels=2)
    torch.manual_seed(0)
    model = HFClassifier(transformers.AutoModelForSequenceClassification.from_config(config)).eval()
    res = export_hf(model, tmp_path / "hf")
    assert res["architecture"] == "BertForSequenceClassification" and res["max_abs_logit_diff"] < 1e-4
    hf = transformers.AutoModelForSequenceClassification.from_pretrained(tmp_path / "hf").eval()
    ids = torch.randint(0, 50, (2, 7))
    with torch.no_grad():
        assert torch.allclose(hf(ids).logits, model(ids)[0], atol=1e-5)


# --------------------------------------------------------------------------------------------------
# folders older transformers read, the model card, a quiet command


@pytest.mark.parametrize("causal", [True, False])
def test_folder_carries_what_transformers_4_reads(tmp_path, tokenizer_file, causal):
    """transformers 4 knows no `TokenizersBackend` and reads the rope base and ModernBERT's global
    layers from their older keys (benchmarks/hf_compat.py loads such folders in 4.48; docs/models.md)."""
    from budgetlm.export import export_hf

    m = Transformer(_cfg(_vocab(tokenizer_file), causal, rope_theta=50000.0)).eval()
    export_hf(m, tmp_path / "hf", tokenizer_file)
    tok_cfg = json.loads((tmp_path / "hf" / "tokenizer_config.json").read_text())
    assert tok_cfg["tokenizer_class"] == "PreTrainedTokenizerFast"
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    if causal:
        assert cfg["rope_theta"] == 50000.0 and cfg["rope_scaling"] is None
    else:
        assert cfg["global_rope_theta"] == cfg["local_rope_theta"] == 50000.0
        assert cfg["global_attn_every_n_layers"] == 1
    assert cfg["torch_dtype"] == "float32"
    # and the installed transformers still reads the folder the same way
    assert type(transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")).__name__ in (
        "PreTrainedTokenizerFast", "TokenizersBackend")


def test_model_card_describes_the_run_and_the_output_is_quiet(tmp_path, capsys):
    from train_helpers import TINY, make_dataset

    data = make_dataset(tmp_path, "shakespeare-mini")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--max-steps", "3", *TINY, "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    transformers.utils.logging.set_verbosity_info()  # a caller that wants transformers' logs keeps them
    try:
        assert main(["export", "--model", str(run), "--out", str(tmp_path / "hf")]) == 0
        assert transformers.utils.logging.get_verbosity() == transformers.utils.logging.INFO
        assert transformers.utils.logging.is_progress_bar_enabled()
    finally:
        transformers.utils.logging.set_verbosity_warning()
    cap = capsys.readouterr()
    printed = cap.out + cap.err
    for noise in ("Loading weights", "it/s]", "%|", "loading file", "loading configuration"):
        assert noise not in printed, printed
    assert "exported LlamaForCausalLM" in printed

    card = (tmp_path / "hf" / "README.md").read_text()
    assert card.startswith("---\nlibrary_name: transformers\npipeline_tag: text-generation\n")
    params = sum(p.numel() for p in transformers.AutoModelForCausalLM.from_pretrained(tmp_path / "hf").parameters())
    for fact in ("`LlamaForCausalLM`", f"| parameters | {params:,} |", "| layers | 2 |", "| width | 32 |",
                 f"`shakespeare-mini` ({summary['tokens']:,} tokens trained)", "| budget | max steps 3 |",
                 "3 optimizer steps", "| device | cpu, fp32 |", f"| validation loss | {summary['val_loss']:.4f} |",
                 f"| validation bits per byte | {summary['val_bpb']:.4f} |",
                 'AutoModelForCausalLM.from_pretrained("hf")', "max difference"):
        assert fact in card, fact


def test_classifier_card_names_labels_and_metrics(tmp_path, capsys, tokenizer_file):
    torch.manual_seed(0)
    clf = SequenceClassifier(_cfg(_vocab(tokenizer_file), False), 2)
    meta = {"labels": ["neg", "pos"], "pooling": "cls", "max_len": 64}
    run = _save(tmp_path, "clf", clf, meta, tokenizer_file)
    (run / "metrics.json").write_text(json.dumps({"accuracy": 0.875, "f1_macro": 0.5, "steps": 12,
                                                  "train_seconds": 75.0, "train_examples": 40}))
    _export(capsys, run, tmp_path / "hf")
    card = (tmp_path / "hf" / "README.md").read_text()
    for fact in ("pipeline_tag: text-classification", "`ModernBertForSequenceClassification`", "| labels | neg, pos |",
                 "| validation accuracy | 0.8750 |", "| validation macro F1 | 0.5000 |", "1m15s of training, 12 optimizer steps"):
        assert fact in card, fact


def test_export_writes_heartbeat_lines_to_a_log(tmp_path, capsys, monkeypatch):
    """Output to a file, not a terminal: an export that takes a while shows itself alive."""
    from train_helpers import TINY, make_dataset

    data = make_dataset(tmp_path, "shakespeare-mini")
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--max-steps", "2", *TINY, "--json"]) == 0
    capsys.readouterr()
    # a tiny export takes about as long as the heartbeat's shortest wait (0.05 s): a line period far
    # below it makes the line certain, from the heartbeat or, at the latest, from the exit
    monkeypatch.setenv("BUDGETLM_PROGRESS_EVERY", "0.001")
    assert main(["export", "--model", str(run), "--out", str(tmp_path / "hf")]) == 0
    err = capsys.readouterr().err
    lines = [ln for ln in err.splitlines() if ln.startswith(f"exporting to {tmp_path / 'hf'}")]
    assert lines and all("elapsed" in ln for ln in lines), err
