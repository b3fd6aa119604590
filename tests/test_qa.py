"""Extractive question answering end to end on a tiny masked model and synthetic SQuAD files (CPU)."""

import json
import random

import numpy as np
import pytest
import torch

from budgetlm.cli import main
from budgetlm.config import BudgetError
from budgetlm.metrics import answer_metrics, exact_match, normalize_answer, token_f1
from train_helpers import lm_meta

NAMES = ["anna", "boris", "clara", "dmitri", "elena", "felix", "greta", "hugo"]
COLORS = ["red", "blue", "green", "yellow", "purple", "orange"]
CITIES = ["paris", "oslo", "rome", "lima", "cairo", "delhi"]
FILL = ["the", "weather", "was", "calm", "and", "nothing", "happened", "that", "day"]


def squad(n, seed, filler=0, v2=False):
    """SQuAD v1.1 data: each context says one person's colour and city; two questions per context.
    v2: SQuAD v2.0, with a third question about someone the context does not mention (unanswerable)."""
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
        if v2:
            other = rng.choice([x for x in NAMES if x != name])
            qas.append({"id": f"{i}n", "question": f"where does {other} live ?", "answers": [], "is_impossible": True,
                        "plausible_answers": [{"text": city, "answer_start": ctx.index(f"in {city}") + 3}]})
        paras.append({"context": ctx, "qas": qas})
    return {"version": "v2.0" if v2 else "1.1", "data": [{"title": "synthetic", "paragraphs": paras}]}


def write(path, obj):
    path.write_text(json.dumps(obj))
    return path


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Tiny matmuls on a shared 2-core machine run far faster on one thread than two (contention)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


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
            "train": write(root / "train.json", squad(150, 1)), "dev": write(root / "dev.json", squad(40, 2)),
            "long": write(root / "long.json", squad(20, 3, filler=40))}


def run_cli(capsys, *args):
    code = main([*args, "--json"])
    cap = capsys.readouterr()
    return code, (json.loads(cap.out) if code == 0 and cap.out.strip() else None), cap.err


def test_squad_normalisation_and_scores():
    # evaluate-v1.1.py: lower-case, punctuation removed (string.punctuation, in-word too), whole-word
    # articles a/an/the removed, whitespace collapsed; EM and F1 take the best gold answer
    assert normalize_answer("The  Denver Broncos!") == "denver broncos"
    assert normalize_answer("Levi's Stadium") == "levis stadium"
    assert normalize_answer("An apple a day, theater") == "apple day theater"
    assert normalize_answer("1–0") == "1–0"  # an en dash is not in string.punctuation: kept
    assert exact_match("the Denver Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    assert exact_match("Broncos won", ["Denver Broncos"]) == 0.0
    assert token_f1("Denver Broncos won", ["Denver Broncos"]) == pytest.approx(0.8)  # P 2/3, R 1
    assert token_f1("Panthers", ["Denver Broncos"]) == 0.0
    # SQuAD dev, "Where did Super Bowl 50 take place?": 3 of the 11 gold tokens, P 1 -> F1 6/14
    long_gold = "Levi's Stadium in the San Francisco Bay Area at Santa Clara, California."
    assert token_f1("Santa Clara, California", [long_gold]) == pytest.approx(6 / 14)
    assert token_f1("Santa Clara, California", [long_gold, "Santa Clara, California"]) == 1.0
    assert token_f1("the the the", ["a"]) == 0.0  # nothing left after normalisation
    m = answer_metrics(["a cat", "dog"], [["cat"], ["a bird"]])
    assert m == {"exact_match": 50.0, "f1": 50.0, "questions": 2}
    # evaluate-v2.0.py: an unanswerable question's gold is "", right only for an empty prediction
    assert exact_match("", [""]) == token_f1("", [""]) == 1.0
    assert exact_match("oslo", [""]) == token_f1("oslo", [""]) == 0.0


def test_squad_v2_questions_without_an_answer(qa_setup):
    from budgetlm.data.tokenizer import special_ids
    from budgetlm.qa import Example, PairLayout, best_answers, read_squad, scores, windows
    from budgetlm.training.checkpoint import QAInfo

    root = qa_setup["root"]
    examples = read_squad(write(root / "v2.json", squad(4, 7, filler=30, v2=True)))
    none = [e for e in examples if e.impossible]
    assert len(none) == 4 and all(e.answers == [] and e.start == -1 for e in none)  # plausible_answers unread
    bad = squad(2, 7, v2=True)
    bad["data"][0]["paragraphs"][0]["qas"][2]["is_impossible"] = "yes"
    with pytest.raises(BudgetError, match="is_impossible must be true or false"):
        read_squad(write(root / "bad.json", bad))
    # every window of an unanswerable question points at [CLS], over a context of several windows
    info = QAInfo(max_len=24, doc_stride=6, max_question_len=12, max_answer_len=5)
    win = windows(qa_setup["tok"], PairLayout.budgetlm(special_ids(qa_setup["tok"])), examples, info)
    for e in (i for i, x in enumerate(examples) if x.impossible):
        mine = [w for w in range(len(win.ids)) if win.example[w] == e]
        assert len(mine) > 1 and all(tuple(win.spans[w]) == (0, 0) for w in mine)
    # [CLS] against the best span: "" only for a run trained with unanswerable questions, and only
    # where [CLS] scores higher in every window of the question
    two = [Example("a", "q", "anna likes red", []), Example("b", "q", "boris likes blue", [])]
    from types import SimpleNamespace

    a, b = [None, (0, 4), (5, 10), (11, 14)], [None, (0, 5), (6, 11), (12, 16)]  # [CLS], then the words
    win = SimpleNamespace(offsets=[a, a, b], example=[0, 0, 1])
    logit = lambda cls, at: (np.array([cls, 0.0, 0.0, at]), np.array([cls, 0.0, 0.0, at]))  # noqa: E731
    logits = [logit(5.0, 2.0), logit(1.0, 0.0), logit(5.0, 2.0)]  # a: a window where [CLS] loses; b: [CLS] wins
    v1 = best_answers(two, win, logits, 5)
    assert [p["answer"] for p in v1] == ["red", "blue"] and not any(p["no_answer"] for p in v1)
    v2 = best_answers(two, win, logits, 5, unanswerable=True)
    assert (v2[0]["answer"], v2[0]["no_answer"]) == ("red", False)
    assert (v2[1]["answer"], v2[1]["no_answer"], v2[1]["score"]) == ("", True, 10.0)
    # v2.0's scores: the answerable and the unanswerable questions apart
    two[1].impossible = True
    got = scores(["red", ""], [Example("a", "q", "anna likes red", ["red"]), two[1]])
    assert got["exact_match"] == 100.0 and got["has_answer_questions"] == got["no_answer_questions"] == 1
    assert scores(["red", "blue"], [Example("a", "q", "c", ["red"]), two[1]])["no_answer_f1"] == 0.0


def test_windows_cover_a_long_context_and_locate_the_answer(qa_setup):
    from budgetlm.data.tokenizer import special_ids
    from budgetlm.qa import PairLayout, read_squad, windows
    from budgetlm.training.checkpoint import QAInfo

    tok = qa_setup["tok"]
    examples = read_squad(qa_setup["long"])
    info = QAInfo(max_len=24, doc_stride=6, max_question_len=12, max_answer_len=5)
    specials = special_ids(tok)
    win = windows(tok, PairLayout.budgetlm(specials), examples, info)
    assert len(win.ids) > len(examples) and win.types is None  # long contexts take several windows
    assert all(len(ids) <= info.max_len for ids in win.ids)
    assert all(ids[0] == specials["cls"] and ids[-1] == specials["sep"] for ids in win.ids)
    for w, (s, e) in enumerate(win.spans):
        ex = examples[win.example[w]]
        if s == 0:
            continue  # this piece does not hold the answer
        a, b = win.offsets[w][s][0], win.offsets[w][e][1]
        assert ex.context[a:b] == ex.answers[0]
    # every question's answer is inside at least one of its windows
    found = {win.example[w] for w, (s, _) in enumerate(win.spans) if s > 0}
    assert found == set(range(len(examples)))
    # consecutive windows of one context share doc_stride context tokens
    first = [w for w in range(len(win.ids)) if win.example[w] == 0][:2]
    ctx = [[o for o in win.offsets[w] if o is not None] for w in first]
    assert ctx[0][-info.doc_stride:] == ctx[1][: info.doc_stride]
    short = QAInfo(max_len=16, doc_stride=12, max_question_len=8, max_answer_len=5)  # fewer context tokens than the stride
    with pytest.raises(BudgetError, match="doc-stride"):
        windows(tok, PairLayout.budgetlm(specials), examples, short)


@pytest.fixture(scope="module")
def qa_run(qa_setup, tmp_path_factory):
    """A question-answering run fine-tuned from the tiny masked run, and its `finetune --json` result."""
    out = tmp_path_factory.mktemp("qarun") / "qa"
    code = main(["finetune", "--task", "qa", "--model", str(qa_setup["mlm"]), "--train", str(qa_setup["train"]),
                 "--val", str(qa_setup["dev"]), "--out", str(out), "--epochs", "8", "--batch-size", "16",
                 "--lr", "3e-3", "--max-len", "32", "--patience", "3", "--device", "cpu", "--precision", "fp32"])
    assert code == 0
    return out, json.loads((out / "metrics.json").read_text())


def test_train_and_eval(qa_setup, qa_run, capsys):
    out, res = qa_run
    assert res["metric"] == "f1" and res["backbone"] == "budgetlm"
    assert res["f1"] >= 80.0 and res["exact_match"] >= 70.0, res  # the word after "likes"/"in"
    assert (out / "report.md").read_text().count("exact match") >= 1
    from budgetlm.training.checkpoint import load_meta

    meta = load_meta(out)
    assert meta.kind == "qa" and meta.qa.max_len == 32 and meta.qa.doc_stride == 10 and meta.qa.max_answer_len == 30
    code, ev, err = run_cli(capsys, "eval", "--model", str(out), "--text", str(qa_setup["dev"]))
    assert code == 0, err
    assert ev["f1"] == pytest.approx(res["f1"]) and ev["questions"] == 80
    # long contexts (several windows each) are answered too
    code, ev, err = run_cli(capsys, "eval", "--model", str(out), "--text", str(qa_setup["long"]))
    assert code == 0 and ev["questions"] == 40 and ev["f1"] >= 50.0, (err, ev)


def test_a_run_trained_on_squad_v2_says_when_there_is_no_answer(qa_setup, tmp_path, capsys):
    from budgetlm.training.checkpoint import load_meta

    train, dev = write(tmp_path / "train.json", squad(150, 1, v2=True)), write(tmp_path / "dev.json", squad(40, 2, v2=True))
    out = tmp_path / "qa2"
    code, res, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["mlm"]), "--train", str(train),
                             "--val", str(dev), "--out", str(out), "--epochs", "20", "--batch-size", "16", "--lr", "3e-3",
                             "--max-len", "32", "--patience", "20", "--device", "cpu", "--precision", "fp32")
    assert code == 0, err
    assert load_meta(out).qa.unanswerable and "450 questions, 150 of them unanswerable" in err
    code, ev, err = run_cli(capsys, "eval", "--model", str(out), "--text", str(dev), "--which", "best")
    assert code == 0, err
    assert ev["f1"] == pytest.approx(res["f1"])
    assert (ev["questions"], ev["has_answer_questions"], ev["no_answer_questions"]) == (120, 80, 40)
    # it tells the two kinds apart (a run that never abstains scores 0 on the unanswerable ones)
    assert ev["has_answer_f1"] >= 70.0 and ev["no_answer_exact_match"] >= 30.0, ev
    code, ans, err = run_cli(capsys, "answer", "--model", str(out), "--input", str(dev))
    assert code == 0, err
    preds = ans["answers"]
    assert all(p["no_answer"] == (p["answer"] == "") for p in preds)
    abstained = [p["id"][-1] for p in preds if p["no_answer"]]  # ids end in n for the unanswerable questions
    assert abstained.count("n") > len(abstained) / 2
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from budgetlm.serve.app import create_app
    from budgetlm.serve.services import load_service

    client = TestClient(create_app(load_service(str(out))))
    unanswered = next(p for p in preds if p["no_answer"])
    body = client.post("/v1/qa", json={"question": unanswered["question"],
                                       "context": next(e["context"] for e in json.loads(dev.read_text())["data"][0]["paragraphs"]
                                                       if any(q["id"] == unanswered["id"] for q in e["qas"]))}).json()
    assert (body["answer"], body["no_answer"]) == ("", True)
    pytest.importorskip("transformers")
    code, _, err = run_cli(capsys, "export", "--model", str(out), "--out", str(tmp_path / "hf"), "--no-verify")
    assert code == 0, err
    assert "handle_impossible_answer=True" in (tmp_path / "hf" / "README.md").read_text()  # the card says so


def test_answer_command_and_api(qa_setup, qa_run, tmp_path, capsys):
    out, _ = qa_run
    code, ans, err = run_cli(capsys, "answer", "--model", str(out), "--question", "where does hugo live ?",
                             "--context", "hugo likes green and lives in oslo .")
    assert code == 0, err
    assert ans["answers"][0]["answer"] == "oslo" and ans["answers"][0]["start"] == 30 and ans["answers"][0]["end"] == 34

    from budgetlm import api

    got = api.load(out).answer(["what does boris like ?"], ["boris likes blue and lives in lima ."])
    assert got[0]["answer"] == "blue" and got[0]["start"] == 12

    # a SQuAD file in, SQuAD predictions ({id: answer}) or JSON lines out
    preds = tmp_path / "pred.json"
    code, ans, err = run_cli(capsys, "answer", "--model", str(out), "--input", str(qa_setup["dev"]), "--output", str(preds))
    assert code == 0, err
    written = json.loads(preds.read_text())
    assert len(written) == 80 and written == {a["id"]: a["answer"] for a in ans["answers"]}
    lines = tmp_path / "pred.jsonl"
    code, _, err = run_cli(capsys, "answer", "--model", str(out), "--input", str(qa_setup["dev"]), "--output", str(lines))
    rows = [json.loads(x) for x in lines.read_text().splitlines()]
    assert code == 0 and len(rows) == 80 and {"id", "question", "answer", "score", "start", "end"} <= set(rows[0])
    # an existing --output is kept unless --overwrite
    code, _, err = run_cli(capsys, "answer", "--model", str(out), "--input", str(qa_setup["dev"]), "--output", str(preds))
    assert code == 2 and "--overwrite" in err and json.loads(preds.read_text()) == written
    code, _, err = run_cli(capsys, "answer", "--model", str(out), "--input", str(qa_setup["dev"]), "--output",
                           str(preds), "--overwrite")
    assert code == 0, err


def test_export_parity_with_auto_model(qa_run, tmp_path, capsys):
    transformers = pytest.importorskip("transformers")
    out, _ = qa_run
    code, exp, err = run_cli(capsys, "export", "--model", str(out), "--out", str(tmp_path / "hf"))
    assert code == 0, err
    assert exp["max_abs_logit_diff"] <= 1e-4 and exp["auto_class"] == "AutoModelForQuestionAnswering"
    assert exp["architecture"] == "ModernBertForQuestionAnswering"
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    hf_tok = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")
    enc = hf_tok(["where does hugo live ?", "what does anna like ?"],
                 ["hugo likes green and lives in oslo .", "anna likes red ."], return_tensors="pt", padding=True)
    from budgetlm.qa import load_qa

    loaded = load_qa(out)
    with torch.no_grad():
        got = hf(input_ids=enc["input_ids"], attention_mask=enc["attention_mask"])
        (start, end), _ = loaded.model(enc["input_ids"], attention_mask=enc["attention_mask"])
    real = enc["attention_mask"].bool()
    assert (got.start_logits - start)[real].abs().max() < 1e-4 and (got.end_logits - end)[real].abs().max() < 1e-4
    q = loaded.tokenizer.encode("where does hugo live ?", add_special_tokens=False).ids
    c = loaded.tokenizer.encode("hugo likes green and lives in oslo .", add_special_tokens=False).ids
    lay = loaded.layout
    assert enc["input_ids"][0].tolist() == [*lay.prefix, *q, *lay.middle, *c, *lay.suffix]  # the window layout
    assert "AutoModelForQuestionAnswering" in (tmp_path / "hf" / "README.md").read_text()


def test_serve_qa_route(qa_run):
    pytest.importorskip("fastapi")
    from fastapi.testclient import TestClient

    from budgetlm.serve.app import create_app
    from budgetlm.serve.services import load_service

    out, _ = qa_run
    client = TestClient(create_app(load_service(str(out))))
    r = client.post("/v1/qa", json={"question": "what does anna like ?", "context": "anna likes red and lives in rome ."})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["answer"] == "red" and (body["start"], body["end"]) == (11, 14) and isinstance(body["score"], float)
    r = client.post("/v1/qa", json={"question": "", "context": "anna likes red ."})
    assert r.status_code == 400 and r.json()["error"]["param"] == "question"
    r = client.post("/v1/qa", json={"question": "who ?"})
    assert r.status_code in (400, 422) and "context" in r.text
    r = client.post("/v1/completions", json={"prompt": "x"})
    assert r.status_code == 400 and "/v1/qa" in r.text


def test_bad_input_is_one_line_and_nothing_is_written(qa_setup, qa_run, tmp_path, capsys):
    good = squad(12, 5)
    bad_span = json.loads(json.dumps(good))
    bad_span["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["answer_start"] = 10_000
    wrong_text = json.loads(json.dumps(good))
    wrong_text["data"][0]["paragraphs"][0]["qas"][0]["answers"][0]["text"] = "zebra"
    no_ctx = {"data": [{"paragraphs": [{"qas": []}]}]}
    no_answers = json.loads(json.dumps(good))
    no_answers["data"][0]["paragraphs"][0]["qas"][0]["answers"] = []
    cases = {
        "span": (write(tmp_path / "span.json", bad_span), "not in its context"),
        "text": (write(tmp_path / "text.json", wrong_text), "not in its context"),
        "keys": (write(tmp_path / "keys.json", no_ctx), "'context'"),
        "nodata": (write(tmp_path / "nodata.json", {"version": "1.1"}), "'data'"),
        "noqs": (write(tmp_path / "noqs.json", {"data": []}), "no questions"),
        "noanswers": (write(tmp_path / "noanswers.json", no_answers), "no answers"),
        "empty": (tmp_path / "empty.json", "is empty"),
        "notjson": (tmp_path / "x.json", "not SQuAD JSON"),
        "missing": (tmp_path / "nothere.json", "no SQuAD file"),
    }
    (tmp_path / "x.json").write_text("{oops")
    (tmp_path / "empty.json").write_text("")
    for name, (path, needle) in cases.items():
        code, _, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["mlm"]),
                               "--train", str(path), "--val", str(qa_setup["dev"]), "--out", str(tmp_path / f"o-{name}"))
        assert code == 2 and needle in err and "Traceback" not in err and len(err.strip().splitlines()) == 1, (name, err)
        assert not (tmp_path / f"o-{name}").exists()
    out, _ = qa_run
    code, _, err = run_cli(capsys, "eval", "--model", str(out), "--text", str(cases["span"][0]))
    assert code == 2 and "not in its context" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "answer", "--model", str(out), "--input", str(cases["keys"][0]))
    assert code == 2 and "'context'" in err and len(err.strip().splitlines()) == 1
    code, _, err = run_cli(capsys, "answer", "--model", str(out), "--question", "who ?")
    assert code == 2 and "--context" in err
    code, _, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["clm"]),
                           "--train", str(qa_setup["train"]), "--out", str(tmp_path / "o-causal"))
    assert code == 2 and "masked" in err and len(err.strip().splitlines()) == 1 and not (tmp_path / "o-causal").exists()
    code, _, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["mlm"]), "--max-len", "500",
                           "--train", str(qa_setup["dev"]), "--out", str(tmp_path / "o-long"))
    assert code == 2 and "exceeds the model's context" in err and not (tmp_path / "o-long").exists()
    # an existing output is not replaced without --overwrite
    (tmp_path / "taken").mkdir()
    (tmp_path / "taken" / "keep.txt").write_text("mine")
    code, _, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["mlm"]),
                           "--train", str(qa_setup["train"]), "--out", str(tmp_path / "taken"))
    assert code == 2 and (tmp_path / "taken" / "keep.txt").read_text() == "mine"
    code, _, err = run_cli(capsys, "finetune", "--task", "qa", "--model", str(qa_setup["mlm"]),
                           "--train", str(qa_setup["train"]), "--out", str(out))
    assert code == 2 and "--overwrite" in err and (out / "metrics.json").is_file()
    code, _, err = run_cli(capsys, "answer", "--model", str(qa_setup["mlm"]), "--question", "a", "--context", "b")
    assert code == 2 and "not a question-answering run" in err


def tiny_bert_folder(root):
    """A Hugging Face BERT folder (masked LM, untrained) with a word-level tokenizer and BERT's pair template."""
    transformers = pytest.importorskip("transformers")
    from tokenizers import Tokenizer, models, pre_tokenizers, processors

    words = NAMES + COLORS + CITIES + FILL + ["likes", "lives", "in", "what", "does", "like", "where", "live", "?", "."]
    vocab = {w: i for i, w in enumerate(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *dict.fromkeys(words)])}
    backend = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.Whitespace()
    backend.post_processor = processors.TemplateProcessing(
        single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1", special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    tok = transformers.PreTrainedTokenizerFast(tokenizer_object=backend, pad_token="[PAD]", unk_token="[UNK]",
                                               cls_token="[CLS]", sep_token="[SEP]", mask_token="[MASK]",
                                               model_input_names=["input_ids", "token_type_ids", "attention_mask"])
    torch.manual_seed(0)
    # initializer_range 0.3: at BERT's 0.02 a 32-wide model attends almost uniformly for hundreds of
    # steps and gives one answer per context whatever the question (F1 ~50 here)
    config = transformers.BertConfig(vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
                                     intermediate_size=64, max_position_embeddings=64, initializer_range=0.3)
    folder = root / "tiny-bert"
    transformers.BertForMaskedLM(config).save_pretrained(folder)
    tok.save_pretrained(folder)
    return folder, tok


def test_hugging_face_bert_folder(qa_setup, tmp_path, capsys):
    """A local BERT folder fine-tunes as AutoModelForQuestionAnswering, with BERT's token types."""
    transformers = pytest.importorskip("transformers")
    from budgetlm.qa import PairLayout, load_qa, read_squad, windows
    from budgetlm.training.checkpoint import QAInfo

    folder, hf_tok = tiny_bert_folder(tmp_path)
    layout = PairLayout.of_hf(hf_tok)
    assert (layout.prefix, layout.middle, layout.suffix, layout.types) == ([2], [3], [3], (0, 0, 0, 1, 1))
    ex = read_squad(qa_setup["dev"])[:1]
    win = windows(hf_tok.backend_tokenizer, layout, ex, QAInfo(max_len=32, doc_stride=10, max_question_len=16,
                                                               max_answer_len=30))
    enc = hf_tok(ex[0].question, ex[0].context)
    assert win.ids[0] == enc["input_ids"] and win.types[0] == enc["token_type_ids"]  # the tokenizer's own pair

    out = tmp_path / "bert-qa"
    args = ["finetune", "--task", "qa", "--model", str(folder), "--train", str(qa_setup["train"]), "--val",
            str(qa_setup["dev"]), "--out", str(out), "--batch-size", "16", "--lr", "3e-3", "--max-len", "32",
            "--patience", "1", "--device", "cpu", "--precision", "fp32"]
    code, res, err = run_cli(capsys, *args, "--epochs", "8")
    assert code == 0, err
    assert res["backbone"] == "hf" and res["f1"] >= 80.0, res
    assert (out / "hf_tokenizer" / "tokenizer.json").is_file()
    code, ans, err = run_cli(capsys, "answer", "--model", str(out), "--question", "where does hugo live ?",
                             "--context", "hugo likes green and lives in oslo .")
    assert code == 0 and ans["answers"][0]["answer"] == "oslo", (err, ans)
    code, ev, err = run_cli(capsys, "eval", "--model", str(out), "--text", str(qa_setup["dev"]))
    assert code == 0 and ev["f1"] == pytest.approx(res["f1"]), err

    code, exp, err = run_cli(capsys, "export", "--model", str(out), "--out", str(tmp_path / "hf"))
    assert code == 0, err
    assert exp["auto_class"] == "AutoModelForQuestionAnswering" and exp["architecture"] == "BertForQuestionAnswering"
    hf = transformers.AutoModelForQuestionAnswering.from_pretrained(tmp_path / "hf").eval()
    enc = transformers.AutoTokenizer.from_pretrained(tmp_path / "hf")("where does hugo live ?",
                                                                     "hugo likes green and lives in oslo .",
                                                                     return_tensors="pt")
    loaded = load_qa(out)
    with torch.no_grad():
        theirs = hf(**enc)
        (start, end), _ = loaded.model(enc["input_ids"], attention_mask=enc["attention_mask"],
                                       token_type_ids=enc["token_type_ids"])
    assert (theirs.start_logits - start).abs().max() < 1e-4 and (theirs.end_logits - end).abs().max() < 1e-4
    assert "return_token_type_ids" not in (tmp_path / "hf" / "README.md").read_text()

    from budgetlm import api

    assert api.load(out).answer(["what does boris like ?"], ["boris likes blue and lives in lima ."])[0]["answer"] == "blue"
    # --overwrite replaces the earlier run (and only with a finished one)
    code, _, err = run_cli(capsys, *args, "--epochs", "1")
    assert code == 2 and "--overwrite" in err
    code, res2, err = run_cli(capsys, *args, "--epochs", "0.5", "--overwrite")
    assert code == 0 and res2["steps"] < res["steps"], err
