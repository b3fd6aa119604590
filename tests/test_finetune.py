"""Fine-tuning end to end on tiny models and synthetic data (CPU, seconds)."""

import json
import random

import numpy as np
import pytest
import torch

from budgetlm.cli import main
from budgetlm.config import BudgetError, to_dict
from budgetlm.labelled import TRUNCATIONS, build_inputs, label_names, read_labelled
from train_helpers import lm_meta  # noqa: E402

POS = ["good", "great", "lovely", "superb", "fine"]
NEG = ["bad", "awful", "dull", "poor", "boring"]
FILL = ["the", "film", "was", "plot", "actors", "a", "story", "and", "very", "it"]


def synth(n, seed, three=False):
    """Texts whose label is decided by which sentiment words they contain."""
    rng = random.Random(seed)
    rows = []
    for _ in range(n):
        k = rng.randrange(3 if three else 2)
        words = rng.choices(FILL, k=6) + rng.choices([NEG, POS, ["meh", "okay", "average"]][k], k=2)
        rng.shuffle(words)
        rows.append({"text": " ".join(words), "label": ["neg", "pos", "mid"][k]})
    return rows


def write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def write_tsv(path, rows, cols=("text", "label")):
    lines = ["\t".join(cols)] + ["\t".join(str(r[c]) for c in cols) for r in rows]
    path.write_text("\n".join(lines) + "\n")
    return path


def make_lm_run(root, causal):
    """A tiny 'pre-trained' run directory as `budgetlm train` writes it (random weights)."""
    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.training.checkpoint import save_checkpoint

    texts = [r["text"] for r in synth(200, 99, three=True)] + ["first second premise hypothesis yes no"]
    tok = train_tokenizer("wordpiece", texts, vocab_size=120)
    tok_path = root / f"tok-{causal}.json"
    save_tokenizer(tok, tok_path)
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=64, causal=causal)
    run = root / ("causal-lm" if causal else "masked-lm")
    save_checkpoint(run, 10, build_model(cfg), lm_meta(cfg), tokenizer_path=tok_path)
    return run


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine run far faster on one thread than two (contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("lm")
    return {"masked": make_lm_run(root, False), "causal": make_lm_run(root, True)}


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("data")
    return {
        "train": write_jsonl(d / "train.jsonl", synth(240, 1)),
        "val": write_jsonl(d / "val.jsonl", synth(60, 2)),
        "train_tsv": write_tsv(d / "train.tsv", synth(240, 1)),
        "val_tsv": write_tsv(d / "val.tsv", synth(60, 2)),
        "train3": write_jsonl(d / "train3.jsonl", synth(300, 3, three=True)),
        "val3": write_jsonl(d / "val3.jsonl", synth(60, 4, three=True)),
    }


FAST = ["--lr", "3e-3", "--batch-size", "16", "--max-len", "24", "--device", "cpu", "--precision", "fp32"]


def finetune(capsys, *argv):
    code = main(["finetune", "--json", *argv])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def test_masked_backbone_learns_string_labels_and_writes_report(runs, data, tmp_path, capsys):
    out = tmp_path / "clf"
    code, res, err = finetune(capsys, "--model", str(runs["masked"]), "--train", str(data["train"]),
                              "--val", str(data["val"]), "--out", str(out), "--epochs", "6", "--patience", "0", *FAST)
    assert code == 0, err
    assert res["labels"] == ["neg", "pos"]
    assert res["accuracy"] >= 0.9  # the sentiment words decide the label: easy to learn
    for key in ("precision_macro", "recall_macro", "f1_macro", "per_class", "confusion_matrix"):
        assert key in res
    assert sum(map(sum, res["confusion_matrix"])) == 60
    report = (out / "report.md").read_text()
    assert "Confusion matrix" in report and "| **pos** |" in report and "val_metric.png" in report
    assert (out / "val_metric.png").stat().st_size > 1000
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["accuracy"] == res["accuracy"]
    assert len(res["history"]) >= 6  # one validation per epoch

    # classify a file and eval the run, with the columns remembered from fine-tuning
    code = main(["classify", "--json", "--model", str(out), "--input", str(data["val"])])
    cls = json.loads(capsys.readouterr().out)
    assert code == 0 and cls["n"] == 60
    truth = [json.loads(line)["label"] for line in data["val"].read_text().splitlines()]
    agree = sum(r["label"] == t for r, t in zip(cls["results"], truth)) / 60
    assert agree == pytest.approx(res["accuracy"])
    assert all(abs(sum(r["probs"].values()) - 1) < 1e-4 for r in cls["results"])

    code = main(["eval", "--json", "--model", str(out), "--text", str(data["val"])])
    ev = json.loads(capsys.readouterr().out)
    assert code == 0 and ev["accuracy"] == pytest.approx(res["accuracy"])

    # plain lines (here gzipped) label the same as the same texts given with --text
    import gzip

    texts = [json.loads(line)["text"] for line in data["val"].read_text().splitlines()][:3]
    lines = tmp_path / "lines.txt.gz"
    lines.write_bytes(gzip.compress(("\n".join(texts) + "\n\n").encode()))
    assert main(["classify", "--json", "--model", str(out), "--input", str(lines)]) == 0
    from_file = json.loads(capsys.readouterr().out)["results"]
    assert main(["classify", "--json", "--model", str(out), *(a for t in texts for a in ("--text", t))]) == 0
    assert from_file == json.loads(capsys.readouterr().out)["results"]

    # int8 quantized inference gives (nearly) the same answers
    from budgetlm.classify import load_classifier
    from budgetlm.quantize import linear_count

    q = load_classifier(out, quantize="int8")
    assert linear_count(q.model)[1] >= 2 * 2 + 1
    texts = [json.loads(line)["text"] for line in data["val"].read_text().splitlines()]
    fp = load_classifier(out).predict(texts)
    assert (q.predict(texts).argmax(-1) == fp.argmax(-1)).mean() >= 0.9


def test_causal_backbone_three_classes_tsv(runs, data, tmp_path, capsys):
    out = tmp_path / "clf3"
    code, res, err = finetune(capsys, "--model", str(runs["causal"]), "--train", str(data["train3"]),
                              "--val", str(data["val3"]), "--out", str(out), "--epochs", "6", *FAST)
    assert code == 0, err
    assert res["labels"] == ["mid", "neg", "pos"] and len(res["per_class"]) == 3
    assert res["accuracy"] >= 0.8


def test_integer_labels_from_tsv_and_sentence_pairs(runs, tmp_path, capsys):
    rng = random.Random(5)
    rows = []
    for _ in range(200):  # label 1 when the two sentences share their sentiment word
        a, b = rng.choice(POS + NEG), rng.choice(POS + NEG)
        rows.append({"s1": f"the film was {a}", "s2": f"it was {b}", "y": int((a in POS) == (b in POS))})
    train = write_tsv(tmp_path / "pairs.tsv", rows[:160], cols=("s1", "s2", "y"))
    val = write_tsv(tmp_path / "pairs_val.tsv", rows[160:], cols=("s1", "s2", "y"))
    out = tmp_path / "pairs"
    code, res, err = finetune(capsys, "--model", str(runs["masked"]), "--train", str(train), "--val", str(val),
                              "--out", str(out), "--text-column", "s1", "--text-pair-column", "s2",
                              "--label-column", "y", "--epochs", "2", *FAST)
    assert code == 0, err
    assert res["labels"] == ["0", "1"]
    # classify must see both sentences (the pair column is remembered)
    code = main(["classify", "--json", "--model", str(out), "--input", str(val)])
    assert code == 0 and json.loads(capsys.readouterr().out)["n"] == 40


def test_early_stopping_keeps_the_best_checkpoint(runs, data, tmp_path, capsys):
    out = tmp_path / "es"
    # a vanishing LR makes no progress: validation never improves after the first evaluation
    code, res, err = finetune(capsys, "--model", str(runs["masked"]), "--train", str(data["train"]),
                              "--val", str(data["val"]), "--out", str(out), "--epochs", "30",
                              "--patience", "2", "--eval-every", "3", *FAST, "--lr", "1e-9")
    assert code == 0, err
    assert res["early_stopped"] is True
    assert res["steps"] < 30 * 15  # stopped long before 30 epochs
    assert len(res["history"]) == 3  # first eval sets the best, two more without gain -> stop
    ckpts = sorted((out / "checkpoints").glob("step_*"))
    assert [c.name for c in ckpts] == [f"step_{res['best_step']:06d}"]


def test_from_scratch_baseline_differs_from_pretrained_init(runs, data, tmp_path, capsys):
    from budgetlm.training.checkpoint import load_model

    out = tmp_path / "scratch"
    code, res, err = finetune(capsys, "--model", str(runs["masked"]), "--train", str(data["train"]),
                              "--val", str(data["val"]), "--out", str(out), "--epochs", "0.1",
                              "--from-scratch", *FAST, "--lr", "1e-12")
    assert code == 0, err
    assert res["from_scratch"] is True
    lm, _ = load_model(runs["masked"])
    clf, _ = load_model(out)
    assert not torch.allclose(lm.embed.weight, clf.backbone.embed.weight)


def test_ema_validates_and_saves_the_averaged_weights(runs, data, tmp_path, capsys):
    from budgetlm.training.checkpoint import load_model

    lm, _ = load_model(runs["masked"])
    moved = {}
    for ema in ("0", "0.9999999"):
        out = tmp_path / f"ema{ema}"
        code, res, err = finetune(capsys, "--model", str(runs["masked"]), "--train", str(data["train"]),
                                  "--val", str(data["val"]), "--out", str(out), "--epochs", "1", "--patience", "0",
                                  "--ema", ema, *FAST)
        assert code == 0, err
        clf, _ = load_model(out)
        moved[ema] = (clf.backbone.embed.weight - lm.embed.weight).abs().max().item()
    # 15 steps at lr 3e-3 move the raw weights; an average with decay 1 - 1e-7 has barely left the start
    assert moved["0"] > 1e-3 and moved["0.9999999"] < 1e-5
    assert "EMA decay 0.9999999" in (tmp_path / "ema0.9999999" / "report.md").read_text()


def test_ensemble_of_classifiers_averages_member_probabilities(runs, data, tmp_path, capsys):
    members = []
    for seed in ("0", "1"):
        out = tmp_path / f"m{seed}"
        code, _, err = finetune(capsys, "--model", str(runs["masked"]), "--train", str(data["train"]),
                                "--val", str(data["val"]), "--out", str(out), "--epochs", "1", "--seed", seed, *FAST)
        assert code == 0, err
        members.append(out)

    def probs(*models):
        argv = [a for m in models for a in ("--model", str(m))]
        assert main(["classify", "--json", *argv, "--input", str(data["val"])]) == 0
        return np.array([[r["probs"]["neg"], r["probs"]["pos"]] for r in json.loads(capsys.readouterr().out)["results"]])

    p0, p1, both = probs(members[0]), probs(members[1]), probs(*members)
    assert not np.allclose(p0, p1, atol=1e-3)  # two seeds, two different members
    np.testing.assert_allclose(both, (p0 + p1) / 2, atol=2e-6)  # classify rounds to 6 decimals
    argv = ["--model", str(members[0]), "--model", str(members[1])]
    assert main(["eval", "--json", *argv, "--text", str(data["val"])]) == 0
    ev = json.loads(capsys.readouterr().out)
    truth = [json.loads(x)["label"] for x in data["val"].read_text().splitlines()]
    expect = np.mean([["neg", "pos"][i] == t for i, t in zip(both.argmax(1), truth)])
    assert ev["model"] == [str(m) for m in members] and ev["accuracy"] == pytest.approx(expect)

    # members must share the labels; a language model cannot be one; LMs are evaluated one at a time
    three = tmp_path / "three"
    assert finetune(capsys, "--model", str(runs["causal"]), "--train", str(data["train3"]), "--val",
                    str(data["val3"]), "--out", str(three), "--epochs", "1", *FAST)[0] == 0
    for argv, needle in ([*argv[:2], "--model", str(three)], "same labels"), \
                        ([*argv[:2], "--model", str(runs["masked"])], "not a fine-tuned classifier"):
        assert main(["eval", *argv, "--text", str(data["val"])]) == 2
        err = capsys.readouterr().err
        assert needle in err and len(err.strip().splitlines()) == 1
    assert main(["eval", "--model", str(runs["masked"]), "--model", str(runs["masked"]), "--text", str(data["val"])]) == 2
    assert "one at a time" in capsys.readouterr().err


@pytest.mark.parametrize(
    "make,needle",
    [
        (lambda d, t: ["--train", str(write_jsonl(t / "a.jsonl", [{"text": "x", "y": 1}] * 5)),
                       "--val", str(d["val"])], "no column 'label'"),
        (lambda d, t: ["--train", str(write_jsonl(t / "b.jsonl", [{"text": "x y", "label": "pos"}] * 5)),
                       "--val", str(d["val"])], "single class"),
        (lambda d, t: ["--train", str(d["train"]), "--val", str(d["val3"])], "not seen in training: 'mid'"),
        (lambda d, t: ["--train", str(t / "missing.jsonl")], "no such file"),
        (lambda d, t: ["--train", str(write_jsonl(t / "c.txt", []))], "unknown format"),
        (lambda d, t: ["--train", str(d["train"]), "--ema", "1"], "--ema must be"),
    ],
)
def test_bad_input_is_one_line_exit_2_and_writes_nothing(runs, data, tmp_path, capsys, make, needle):
    out = tmp_path / "never"
    code = main(["finetune", "--model", str(runs["masked"]), "--out", str(out), *make(data, tmp_path)])
    err = capsys.readouterr().err
    assert code == 2
    assert needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_under_torchrun_one_process_commands_refuse_before_writing(runs, data, tmp_path, capsys, monkeypatch):
    """Fine-tuning and evaluation run in one process: under torchrun every rank would do the whole job
    on the same data and write the same folder."""
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "clf"
    for argv in (["finetune", "--model", str(runs["masked"]), "--train", str(data["train"]), "--out", str(out)],
                 ["eval", "--model", str(runs["causal"]), "--text", str(data["val"])]):
        code = main(argv)
        err = capsys.readouterr().err
        assert code == 2 and "launch it without torchrun" in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_refuses_existing_out_and_language_model_where_classifier_needed(runs, data, tmp_path, capsys):
    out = tmp_path / "exists"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    code = main(["finetune", "--model", str(runs["masked"]), "--train", str(data["train"]), "--out", str(out)])
    assert code == 2 and "already exists" in capsys.readouterr().err
    code = main(["finetune", "--model", str(runs["masked"]), "--train", str(data["train"]), "--out", str(out),
                 "--overwrite"])
    assert code == 2 and "not a folder budgetlm made" in capsys.readouterr().err  # a user's folder is never replaced
    assert (out / "keep.txt").read_text() == "precious" and sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    code = main(["classify", "--model", str(runs["causal"]), "--text", "hi"])
    err = capsys.readouterr().err
    assert code == 2 and "not a fine-tuned classifier" in err and len(err.strip().splitlines()) == 1


def test_hf_model_folder(tmp_path, data, capsys):
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers

    words = sorted({w for r in synth(300, 0) for w in r["text"].split()})
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *words])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]")
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2,
                                     num_attention_heads=2, intermediate_size=64, max_position_embeddings=64)
    hf_dir = tmp_path / "tiny-bert"
    transformers.BertForSequenceClassification(config).save_pretrained(hf_dir)
    tok.save_pretrained(hf_dir)
    out = tmp_path / "hfclf"
    code, res, err = finetune(capsys, "--model", str(hf_dir), "--train", str(data["train"]), "--val", str(data["val"]),
                              "--out", str(out), "--epochs", "4", *FAST)
    assert code == 0, err
    assert res["backbone"] == "hf" and res["accuracy"] >= 0.8
    code = main(["classify", "--json", "--model", str(out), "--text", "a good great film", "--text", "dull bad plot"])
    got = json.loads(capsys.readouterr().out)
    assert code == 0 and [r["label"] for r in got["results"]] == ["pos", "neg"]


def test_hf_models_take_the_runtimes_attention_precision(monkeypatch):
    """Where runtime.prepare_training measures fp32 attention faster under bf16 autocast, an HF model's
    SDPA attention computes in fp32 too (a registered AttentionInterface function), and switches back."""
    transformers = pytest.importorskip("transformers")
    import torch.nn.functional as F

    from budgetlm import runtime
    from budgetlm.hf import FP32_SDPA, HFClassifier

    torch.manual_seed(0)
    config = transformers.BertConfig(vocab_size=50, hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=32)
    clf = HFClassifier(transformers.BertForSequenceClassification(config))
    seen, real = [], F.scaled_dot_product_attention
    monkeypatch.setattr(F, "scaled_dot_product_attention", lambda q, *a, **k: seen.append(q.dtype) or real(q, *a, **k))
    monkeypatch.setattr(runtime, "_time_attention", lambda dtype, reps=3: {torch.float32: 1.0, torch.bfloat16: 3.0}[dtype])
    runtime.cpu_attention_fp32.cache_clear()
    idx, mask, y = torch.randint(0, 50, (2, 8)), torch.ones(2, 8, dtype=torch.long), torch.tensor([0, 1])
    mask[1, 6:] = 0

    def loss():
        seen.clear()
        with torch.autocast("cpu", dtype=torch.bfloat16):
            out = clf(idx, labels=y, attention_mask=mask)[1]
        out.backward()
        return out.item(), list(seen)

    loss16, dtypes16 = loss()
    runtime.prepare_training(clf, runtime.Runtime(torch.device("cpu"), "cpu", "bf16", "test"), compile="off")
    loss32, dtypes32 = loss()
    assert clf.hf.config._attn_implementation == FP32_SDPA
    assert dtypes16 == [torch.bfloat16] * 2 and dtypes32 == [torch.float32] * 2 and abs(loss32 - loss16) < 0.02
    runtime.prepare_training(clf, runtime.Runtime(torch.device("cpu"), "cpu", "fp32", "test"), compile="off")
    assert clf.hf.config._attn_implementation == "sdpa"
    runtime.cpu_attention_fp32.cache_clear()


@pytest.mark.parametrize("family", ["BertConfig", "RobertaConfig", "DistilBertConfig", "ModernBertConfig"])
def test_dropout_reaches_every_dropout_field_of_hf_encoders(family):
    """--dropout on a Hugging Face folder sets every dropout probability its config has (backbone and
    heads), not only BERT's names."""
    transformers = pytest.importorskip("transformers")
    from budgetlm.hf import dropout_overrides

    config = getattr(transformers, family)()
    fields = {k for k in config.to_dict() if "dropout" in k}
    assert fields and set(dropout_overrides(config, 0.3)) == fields
    config.update(dropout_overrides(config, 0.3))
    assert all(getattr(config, k) == 0.3 for k in fields)


def test_readers_and_label_helpers(tmp_path):
    csv_path = tmp_path / "x.csv"
    csv_path.write_text('text,label\n"hello, world",1\nbye,0\n')
    d = read_labelled(csv_path)
    assert d.texts == ["hello, world", "bye"] and d.labels == ["1", "0"]
    assert label_names(["10", "9", "2"]) == ["2", "9", "10"]  # integers sort as numbers
    assert label_names(["b", "a", "b"]) == ["a", "b"]
    seq = build_inputs(list(range(10)), list(range(100, 104)), 10, [1], [2], [3])
    assert len(seq) == 10 and seq[0] == 1 and seq[-1] == 3 and 2 in seq


def test_readers_take_compressed_files_and_refuse_damaged_ones(tmp_path):
    import gzip

    rows = [{"text": "fine film", "label": "pos"}, {"text": "dull", "label": "neg"}]
    gz = tmp_path / "x.jsonl.gz"
    gz.write_bytes(gzip.compress("".join(json.dumps(r) + "\n" for r in rows).encode()))
    assert read_labelled(gz).texts == ["fine film", "dull"]
    bom = tmp_path / "bom.csv"
    bom.write_bytes("\ufefftext,label\ncaf\u00e9,1\n".encode())  # Excel writes a BOM before the header
    assert read_labelled(bom).texts == ["caf\u00e9"]
    bad = tmp_path / "bad.tsv.gz"
    whole = gzip.compress(b"text\tlabel\n" + b"".join(b"w%d\t1\n" % i for i in range(1000)))
    bad.write_bytes(whole[: len(whole) // 2])  # a truncated download
    with pytest.raises(BudgetError, match="cannot read"):
        read_labelled(bad)


@pytest.mark.parametrize("mode, kept", [("head", [0, 1, 2, 3, 4, 5, 6, 7]), ("tail", [12, 13, 14, 15, 16, 17, 18, 19]),
                                         ("head+tail", [0, 1, 14, 15, 16, 17, 18, 19])])
def test_every_truncation_keeps_its_part(mode, kept):
    assert set(TRUNCATIONS) == {"head", "tail", "head+tail"}
    assert build_inputs(list(range(20)), None, 10, [-1], [-2], [-3], mode) == [-1, *kept, -3]
    assert build_inputs(list(range(5)), None, 10, [-1], [-2], [-3], mode) == [-1, 0, 1, 2, 3, 4, -3]  # fits: whole
    pair = build_inputs(list(range(20)), [100, 101], 13, [-1], [-2], [-3], mode)  # the longer text gives way
    assert pair == [-1, *kept, -2, 100, 101, -3]


def test_truncate_tail_reads_the_end_of_long_texts(runs, tmp_path, capsys):
    # The sentiment words come after 12 filler words; 8 tokens only reach them from the end.
    def late(n, seed):
        rows = synth(n, seed)
        rng = random.Random(seed)
        for r in rows:
            words = r["text"].split()
            mood = [w for w in words if w not in FILL]
            r["text"] = " ".join(rng.choices(FILL, k=12) + mood)
        return rows

    train, val = write_jsonl(tmp_path / "t.jsonl", late(240, 5)), write_jsonl(tmp_path / "v.jsonl", late(60, 6))
    acc = {}
    for mode in ("head", "tail"):
        out = tmp_path / mode
        code, res, err = finetune(capsys, "--model", str(runs["masked"]), "--train", str(train), "--val", str(val),
                                  "--out", str(out), "--epochs", "6", "--patience", "0", *FAST, "--max-len", "8",
                                  "--truncate", mode)
        assert code == 0, err
        acc[mode] = res["accuracy"]
    assert acc["tail"] >= 0.9 and acc["head"] <= 0.75
    # classify and eval read long texts the way the classifier was trained: from the end
    assert main(["eval", "--json", "--model", str(tmp_path / "tail"), "--text", str(val)]) == 0
    assert json.loads(capsys.readouterr().out)["accuracy"] == pytest.approx(acc["tail"])


def test_batches_cover_each_example_once_per_epoch_with_little_padding():
    from budgetlm.finetuning import Batches

    rng = random.Random(0)
    seqs = [[1] * rng.randint(1, 60) for _ in range(1000)]
    labels = torch.arange(1000).numpy()  # label = example index, to see which examples came
    b = Batches(seqs, labels, None, 0, 10, seed=0)
    seen, padded, real = [], 0, 0
    for _ in range(b.steps_per_epoch):
        batch = b()
        seen += batch["labels"].tolist()
        padded += batch["idx"].numel()
        real += int(batch["attention_mask"].sum())
    assert sorted(seen) == list(range(1000))
    assert padded < 1.1 * real  # random batches of this mix would pad ~1.8x
    b()
    assert b.epoch == 2


def test_hf_dataset_folder_with_classlabel_names(runs, tmp_path, capsys):
    datasets = pytest.importorskip("datasets")
    features = datasets.Features({"sentence": datasets.Value("string"),
                                  "label": datasets.ClassLabel(names=["negative", "positive"])})

    def split(n, seed):
        rows = synth(n, seed)
        return datasets.Dataset.from_dict(
            {"sentence": [r["text"] for r in rows], "label": [int(r["label"] == "pos") for r in rows]},
            features=features)

    folder = tmp_path / "hfds"
    datasets.DatasetDict({"train": split(120, 1), "validation": split(40, 2)}).save_to_disk(str(folder))
    code, res, err = finetune(capsys, "--model", str(runs["masked"]), "--hf-dataset", str(folder),
                              "--text-column", "sentence", "--out", str(tmp_path / "o"), "--epochs", "1", *FAST)
    assert code == 0, err
    assert res["labels"] == ["negative", "positive"] and res["val_examples"] == 40


def test_overwrite_replaces_a_classifier_only_by_a_finished_one(runs, data, tmp_path, capsys, monkeypatch):
    out = tmp_path / "clf"
    args = ["finetune", "--model", str(runs["masked"]), "--train", str(data["train"]), "--val", str(data["val"]),
            "--out", str(out), "--epochs", "0.2", *FAST]
    assert main(args) == 0
    before = {p.name: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    import budgetlm.finetuning as ft

    def crash(*a, **k):
        raise RuntimeError("power cut")

    monkeypatch.setattr(ft, "finetune_loop", crash)
    with pytest.raises(RuntimeError, match="power cut"):
        ft.finetune(ft.FinetuneConfig(model=str(runs["masked"]), train=str(data["train"]), val=str(data["val"]),
                                      out=str(out), overwrite=True))
    after = {p.name: p.read_bytes() for p in (out / "checkpoints").rglob("*") if p.is_file()}
    assert after == before  # the old classifier is intact
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary left
    monkeypatch.undo()
    capsys.readouterr()
    assert main([*args, "--overwrite", "--json"]) == 0  # a finished run replaces it
    assert json.loads(capsys.readouterr().out)["run_dir"] == str(out)


def test_fp16_fine_tuning_creates_and_steps_a_grad_scaler(runs, data, tmp_path, capsys, monkeypatch):
    """On a GPU without bf16 (T4, V100) `auto` picks fp16: fine-tuning must scale the loss. The CPU runs
    fp16 autocast and torch.amp.GradScaler('cpu') the same way, so the path is checked here."""
    from budgetlm import runtime

    monkeypatch.setattr(runtime, "init_runtime",
                        lambda device="auto", precision="auto", seed=0: runtime.Runtime(
                            torch.device("cpu"), "cpu", "fp16", "test: fp16 on CPU"))
    calls = {"step": 0, "update": 0, "scale": 0}
    real = torch.amp.GradScaler

    class Spy(real):
        def scale(self, outputs):
            calls["scale"] += 1
            return super().scale(outputs)

        def step(self, optimizer, *a, **k):
            calls["step"] += 1
            return super().step(optimizer, *a, **k)

        def update(self, *a, **k):
            calls["update"] += 1
            return super().update(*a, **k)

    monkeypatch.setattr(torch.amp, "GradScaler", Spy)
    code, res, err = finetune(capsys, "--model", str(runs["masked"]), "--train", str(data["train"]),
                              "--val", str(data["val"]), "--out", str(tmp_path / "fp16"), "--epochs", "0.3", *FAST)
    assert code == 0, err
    assert calls["scale"] >= res["steps"] > 0 and calls["step"] == calls["update"] == res["steps"]
    assert 0.0 <= res["accuracy"] <= 1.0 and np.isfinite(res["history"][-1]["val_loss"])


def test_validation_measures_the_model_without_dropout(tmp_path):
    """Every task's validation runs in eval mode (as `eval`, `classify` and `answer` run the saved
    model), and training resumes in train mode."""
    import math
    from types import SimpleNamespace

    from budgetlm.finetuning import Validator

    seen = []

    class Probe(Validator):
        def measure(self, model):
            seen.append(model.training)
            return -math.inf, None, {}, {}  # no gain: nothing is saved

    model = torch.nn.Sequential(torch.nn.Linear(2, 2), torch.nn.Dropout(0.5)).train()
    Probe(SimpleNamespace(metric="f1", patience=0), tmp_path, None, None, 10)(model, SimpleNamespace(step=1))
    assert seen == [False] and model.training
