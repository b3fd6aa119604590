"""Extractive question answering end to end on a tiny masked model and synthetic SQuAD files (CPU)."""

import json
import random

import pytest
import torch

from budgetlm.cli import main
from budgetlm.metrics import answer_metrics, exact_match, normalize_answer, token_f1
from train_helpers import lm_meta

NAMES = ["anna", "boris", "clara", "dmitri", "elena", "felix", "greta", "hugo"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
CITIES = ["paris", "oslo", "rome", "lima", "cairo", "delhi"]
FILL = ["the", "weather", "was", "calm", "and", "nothing", "happened", "that", "day"]


def squad(n, seed, filler=0):
    """SQuAD v1.1 data: each context says one person's colour and city; two questions per context."""
    rng = random.Random(seed)
    paras = []
    for i in range(n):
        name, color, city = rng.choice(NAMES), rng.choice(COLORS), rng.choice(CITIES)
        pad = " ".join(rng.choices(FILL, k=filler))
        ctx = f"{pad} {name} likes {color} and lives in {city} .".strip()
        qas = [{"id": f"{i}c", "question": f"what does {name} like ?",
                "answers": [{"text": color, "answer_start": ctx.index(f"likes {color}") + 6}]},
               {"id": f"{i}p", "question": f"where does {name} live ?",
                "answers": [{"text": city, "answer_start": ctx.index(f"in {city}") + 3}]}]
        paras.append({"context": ctx, "qas": qas})
    return {"version": "1.1", "data": [{"title": "synthetic", "paragraphs": paras}]}


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(scope="module")
def qa_setup(tmp_path_factory):
    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import build_model
    from budgetlm.training.checkpoint import save_checkpoint

    root = tmp_path_factory.mktemp("qa")
    texts = [" ".join(NAMES + COLORS + CITIES + FILL + ["likes", "lives", "in", "what", "does", "like", "where", "live", "?", "."])]
    tok = train_tokenizer("wordpiece", texts * 20, vocab_size=120)
    save_tokenizer(tok, root / "tok.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=64, causal=False)
    save_checkpoint(root / "mlm", 10, build_model(cfg), lm_meta(cfg), tokenizer_path=root / "tok.json")
    causal = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=1, n_embd=32, n_head=2, max_seq_len=64)
    save_checkpoint(root / "clm", 10, build_model(causal), lm_meta(causal), tokenizer_path=root / "tok.json")
    return {"root": root, "mlm": root / "mlm", "clm": root / "clm", "tok": tok,
            "train": write(root / "train.json", squad(300, 1)), "dev": write(root / "dev.json", squad(40, 2)),
            "long": write(root / "long.json", squad(20, 3, filler=40))}


def run_cli(capsys, *args):
    code = main([*args, "--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if code == 0 and cap.out.strip() else None), cap.err


def test_squad_normalisation_and_scores():
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Broncos won", ["Denver Broncos"]) == 0.0
    assert token_f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)  # P 2/3, R 1
    assert token_f1("Panthers", ["Denver Broncos"]) == 0.0
    m = answer_metrics(["a cat", "dog"], [["cat"], ["a bird"]])
    assert m == {"exact_match": 50.0, "f1": 50.0, "questions": 2}


def test_windows_cover_a_long_context_and_locate_the_answer(qa_setup):
    from budgetlm.data.tokenizer import special_ids
    from budgetlm.qa import read_squad, windows
    from budgetlm.training.checkpoint import QAInfo

    tok = qa_setup["tok"]
    examples = read_squad(qa_setup["long"])
    info = QAInfo(max_len=24, doc_stride=6, max_question_len=12, max_answer_len=5)
    win = windows(tok, special_ids(tok), examples, info)
    assert len(win.ids) > len(examples)  # long contexts take several windows
    assert all(len(ids) <= info.max_len for ids in win.ids)
    for w, (s, e) in enumerate(win.spans):
        ex = examples[win.example[w]]
        if s == 0:
            continue  # this piece does not hold the answer
        a, b = win.offsets[w][s][0], win.offsets[w][e][1]
        assert ex.context[a:b] == ex.answers[0]
    # every question's answer is inside at least one of its windows
    found = {win.example[w] for w, (s, _) in enumerate(win.spans) if s > 0}
    assert found == set(range(len(examples)))


def test_train_eval_answer_export_and_serve(qa_setup, tmp_path, capsys):
    out = tmp_path / "qa"
    code, res, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["mlm"]),
                             "--train", str(qa_setup["train"]), "--val", str(qa_setup["dev"]), "--out", str(out),
                             "--epochs", "8", "--batch-size", "16", "--lr", "3e-3", "--max-len", "32",
                             "--device", "cpu", "--precision", "fp32")
    assert code == 0, err
    assert res["f1"] >= 80.0 and res["exact_match"] >= 70.0, res  # the position after "likes"/"in" is learnt
    assert (out / "report.md").read_text().count("exact match") >= 1

    code, ev, err = run_cli(capsys, "eval", "--model", str(out), "--text", str(qa_setup["dev"]))
    assert code == 0, err
    assert ev["f1"] == pytest.approx(res["f1"]) and ev["questions"] == 80

    code, ans, err = run_cli(capsys, "answer", "--model", str(out), "--question", "where does hugo live ?",
                             "--context", "hugo likes green and lives in oslo .")
    assert code == 0, err
    assert ans["answers"][0]["answer"] == "oslo" and ans["answers"][0]["start"] == 30

    from budgetlm import api

    got = api.load(out).answer(["what does boris like ?"], ["boris likes blue and lives in lima ."])
    assert got[0]["answer"] == "blue" and got[0]["start"] == 12

    # export: transformers' AutoModelForQuestionAnswering gives the same start and end logits
    transformers = pytest.importorskip("transformers")
    code, exp, err = run_cli(capsys, "export", "--model", str(out), "--out", str(tmp_path / "hf"))
    assert code == 0, err
    assert exp["max_abs_logit_diff"] <= 1e-4 and exp["auto_class"] == "AutoModelForQuestionAnswering"
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = hf_tok("where does hugo live ?", "hugo likes green and lives in oslo .", return_tensors="pt")
    from budgetlm.qa import load_qa

    loaded = load_qa(out)
    with torch.no_grad():
        got = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        (start, end), _ = loaded.model(enc["input_ids"], attention_mask=enc["attention_mask"])
    assert torch.allclose(got.start_logits, start, atol=1e-4) and torch.allclose(got.end_logits, end, atol=1e-4)
    from budgetlm.data.tokenizer import special_ids

    ids = special_ids(loaded.tokenizer)
    q = loaded.tokenizer.encode("where does hugo live ?", add_special_tokens=False).ids
    c = loaded.tokenizer.encode("hugo likes green and lives in oslo .", add_special_tokens=False).ids
    assert enc["input_ids"][0].tolist() == [ids["cls"], *q, ids["sep"], *c, ids["sep"]]  # the window layout

    # the server's /v1/qa route
    from fastapi.testclient import TestClient

    from budgetlm.serve.app import create_app
    from budgetlm.serve.services import load_service

    client = TestClient(create_app(load_service(str(out))))
    r = client.post("/v1/qa", json={"question": "what does anna like ?", "context": "anna likes red and lives in rome ."})
    assert r.status_code == 200, r.text
    assert r.json()["answer"] == "red"
    r = client.post("/v1/qa", json={"question": "", "context": "anna likes red ."})
    assert r.status_code == 400 and r.json()["error"]["param"] == "question"
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 400 and "/v1/qa" in r.text


def test_bad_input_is_one_line_and_nothing_is_written(qa_setup, tmp_path, capsys):
    good = squad(12, 5)
    bad_span = json.loads(json.dumps(good))
    bad_span["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 10_000
    wrong_text = json.loads(json.dumps(good))
    wrong_text["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "zebra"
    no_ctx = {"data": [{"paragraphs": [{"qas": []}]}]}
    cases = {
        "span": (write(tmp_path / "span.json", bad_span), "not in its context"),
        "text": (write(tmp_path / "text.json", wrong_text), "not in its context"),
        "keys": (write(tmp_path / "keys.json", no_ctx), "'context'"),
        "empty": (write(tmp_path / "empty.json", {"data": []}), "no questions"),
        "notjson": (tmp_path / "x.json", "not SQuAD JSON"),
    }
    (tmp_path / "x.json").write_text("{oops")
    for name, (path, needle) in cases.items():
        code, _, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["mlm"]),
                               "--train", str(path), "--out", str(tmp_path / f"o-{name}"))
        assert code != 0 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not (tmp_path / f"o-{name}").exists()
    code, _, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["clm"]),
                           "--train", str(qa_setup["train"]), "--out", str(tmp_path / "o-causal"))
    assert code != 0 and "masked" in err and not (tmp_path / "o-causal").exists()
    # an existing output is not replaced without --overwrite
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["mlm"]),
                           "--train", str(qa_setup["train"]), "--out", str(tmp_path / "taken"))
    assert code != 0 and (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, "answer", "--model", str(qa_setup["mlm"]), "--question", "a", "--context", "b")
    assert code != 0 and "not a question-answering run" in err
