"""Sampling engine and the `generate` command.

Run: .venv/bin/python -m pytest tests/test_generate.py -q
"""

from __future__ import annotations

import json

import pytest
import torch

from budgetlm.cli import main
from budgetlm.config import to_dict
from budgetlm.generate import TextStream, generate_tokens, generate_uncached, sample_next
from budgetlm.models.config import ModelConfig
from budgetlm.models.transformer import Transformer
from train_helpers import lm_meta  # noqa: E402

V = 64


def tiny_lm(seq: int = 32, causal: bool = True, vocab: int = V) -> Transformer:
    torch.manual_seed(0)
    m = Transformer(ModelConfig(vocab_size=vocab, n_layer=2, n_embd=32, n_head=2, max_seq_len=seq,
                                causal=causal, tie_embeddings=False))
    with torch.no_grad():  # spread-out logits (untied, scaled output) so greedy paths vary
        m.lm_head.weight.mul_(20)
        m.embed.weight.mul_(20)
    return m.eval()


# -- sampling ------------------------------------------------------------------------------------------


def test_temperature_zero_and_top_k_one_are_greedy():
    logits = torch.randn(50)
    best = int(logits.argmax())
    assert sample_next(logits, temperature=0) == best
    g = torch.Generator().manual_seed(0)
    assert all(sample_next(logits, 1.5, top_k=1, generator=g) == best for _ in range(20))
    assert all(sample_next(logits, 1.0, top_p=1e-6, generator=g) == best for _ in range(20))
    # a top_p that is 0 in float32 still keeps the most likely token
    assert sample_next(logits, 1.0, top_p=1e-46, generator=g) == best


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([4.0, 3.0, 2.0, -1.0, -2.0])  # probs ~ .66 .24 .09 .004 .002
    g = torch.Generator().manual_seed(0)
    assert {sample_next(logits, 1.0, top_k=2, generator=g) for _ in range(200)} == {0, 1}
    assert {sample_next(logits, 1.0, top_p=0.8, generator=g) for _ in range(200)} == {0, 1}
    assert {sample_next(logits, 1.0, top_p=0.95, generator=g) for _ in range(300)} == {0, 1, 2}


def test_sampling_follows_the_distribution():
    logits = torch.log(torch.tensor([0.7, 0.2, 0.1]))
    g = torch.Generator().manual_seed(1)
    draws = torch.tensor([sample_next(logits, 1.0, generator=g) for _ in range(2000)])
    freq = torch.bincount(draws, minlength=3).float() / 2000
    assert torch.allclose(freq, torch.tensor([0.7, 0.2, 0.1]), atol=0.04)


# -- engine --------------------------------------------------------------------------------------------


def test_same_seed_same_tokens_different_seed_different_tokens():
    m = tiny_lm()

    def draw(seed):
        g = torch.Generator().manual_seed(seed)
        return list(generate_tokens(m, [1, 2, 3], 20, temperature=1.0, generator=g))

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_kv_cache_greedy_equals_uncached_greedy():
    m = tiny_lm(seq=32)
    prompt = [5, 9, 2, 33]
    cached = list(generate_tokens(m, prompt, 25, temperature=0))
    assert len(cached) == 25 and len(set(cached)) > 1
    assert cached == generate_uncached(m, prompt, 25)


def test_stop_token_ends_generation_and_is_not_yielded():
    m = tiny_lm()
    greedy = list(generate_tokens(m, [1, 2], 10, temperature=0))
    stop_at = greedy[3]
    first = greedy.index(stop_at)
    got = list(generate_tokens(m, [1, 2], 10, temperature=0, stop_ids=[stop_at]))
    assert got == greedy[:first]


def test_generation_runs_past_the_context_window():
    m = tiny_lm(seq=8)
    out = list(generate_tokens(m, list(range(1, 12)), 30, temperature=0))  # prompt longer than window too
    assert len(out) == 30


def test_engine_rejects_masked_models_and_empty_prompts():
    with pytest.raises(ValueError):
        next(generate_tokens(tiny_lm(causal=False), [1], 3))
    with pytest.raises(ValueError):
        next(generate_tokens(tiny_lm(), [], 3))


def test_text_stream_holds_back_split_utf8():
    from budgetlm.data.tokenizer import train_tokenizer

    tok = train_tokenizer("byte", None)
    stream = TextStream(tok)
    pieces = [stream.push(b) for b in "é!".encode()]  # é is two bytes
    assert pieces == ["", "é", "!"]
    assert stream.text() == "é!"


# -- command ---------------------------------------------------------------------------------------------


@pytest.fixture
def run_dir(tmp_path):
    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer
    from budgetlm.training.checkpoint import save_checkpoint

    def make(causal: bool = True, name: str = "run"):
        tok = train_tokenizer("byte", None)
        tok_path = tmp_path / f"{name}-tokenizer.json"
        save_tokenizer(tok, tok_path)
        m = tiny_lm(causal=causal, vocab=tok.get_vocab_size())
        save_checkpoint(tmp_path / name, 1, m, lm_meta(m.cfg), tokenizer_path=tok_path)
        return tmp_path / name

    return make


def _json(capsys) -> dict:
    return json.loads(capsys.readouterr().out)


def test_generate_command_json_is_deterministic_with_seed(run_dir, capsys):
    run = str(run_dir())
    argv = ["generate", "--model", run, "--prompt", "To be", "--max-new-tokens", "12", "--seed", "3", "--json"]
    assert main(argv) == 0
    a = _json(capsys)
    assert main(argv) == 0
    b = _json(capsys)
    assert a["text"] == b["text"] and a["seed"] == 3
    assert a["tokens"] <= 12 and a["prompt_tokens"] == 5
    assert a["finish_reason"] in ("stop", "length") and a["tokens_per_s"] > 0


def test_generate_command_streams_to_stdout_without_json(run_dir, capsys):
    run = str(run_dir())
    assert main(["generate", "--model", run, "--prompt", "Hi", "--max-new-tokens", "5",
                 "--temperature", "0"]) == 0
    out = capsys.readouterr().out
    assert out.startswith("Hi") and out.endswith("\n")


@pytest.mark.parametrize("flags", [["--top-p", "0"], ["--temperature", "-1"], ["--max-new-tokens", "0"]])
def test_generate_command_rejects_bad_flags(run_dir, capsys, flags):
    run = str(run_dir())
    assert main(["generate", "--model", run, "--prompt", "x", *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "error" in err


def test_generate_command_errors(run_dir, tmp_path, capsys):
    masked = str(run_dir(causal=False, name="masked"))
    assert main(["generate", "--model", masked, "--prompt", "x"]) == 2
    assert "causal" in capsys.readouterr().err
    assert main(["generate", "--model", str(tmp_path / "nope"), "--prompt", "x"]) == 2
    assert capsys.readouterr().err.count("\n") == 1


# -- batches ---------------------------------------------------------------------------------------------

PROMPTS = [[5, 9, 2, 33], [7], list(range(1, 11)), [40, 41], [7]]


def _rows(steps, n: int) -> list[list[int]]:
    rows: list[list[int]] = [[] for _ in range(n)]
    for step in steps:
        for r, token in enumerate(step.tokens):
            if token is not None:
                rows[r].append(token)
    return rows


def test_left_padded_cache_logits_equal_each_rows_own_forward():
    """Padding hidden, positions per row: prefill, a multi-token chunk, then single-token steps."""
    m = tiny_lm(seq=32)
    rows = [[5, 9, 2, 33, 8, 1], [7, 3], [40, 41, 42, 43]]
    more = [[11, 12], [13, 14], [15, 16]]  # fed as one (B, 2) chunk after the prefill
    T = max(len(r) for r in rows)
    idx = torch.tensor([[0] * (T - len(r)) + r for r in rows])
    mask = torch.tensor([[0] * (T - len(r)) + [1] * len(r) for r in rows])
    cache = m.new_kv_cache(batch_size=3)
    got = [m.step(idx, cache, attention_mask=mask), m.step(torch.tensor(more), cache)]
    got += [m.step(torch.tensor([[20 + i] for i in range(3)]), cache) for _ in range(2)]
    for i, r in enumerate(rows):
        full, _ = m(torch.tensor([r + more[i] + [20 + i] * 2]))
        want = full[0, [len(r) - 1, len(r) + 1, len(r) + 2, len(r) + 3]]
        assert torch.allclose(torch.stack([g[i] for g in got]), want, atol=1e-4)
    cache.select([2, 0])  # rows leave the batch: the rest go on unchanged
    nxt = m.step(torch.tensor([[30], [31]]), cache)
    for i, r in zip((2, 0), (0, 1)):
        full, _ = m(torch.tensor([rows[i] + more[i] + [20 + i] * 2 + [30 + r]]))
        assert torch.allclose(nxt[r], full[0, -1], atol=1e-4)


def test_cache_rows_can_repeat_beyond_the_batch():
    """select may repeat rows (more rows than the cache had): each copy goes on as its source would."""
    m = tiny_lm(seq=32)
    rows = [[5, 9, 2], [7, 3, 4]]
    cache = m.new_kv_cache(batch_size=2)
    m.step(torch.tensor(rows), cache)
    cache.select([1, 0, 1])
    got = m.step(torch.tensor([[30], [31], [32]]), cache)
    for r, (src, tok) in enumerate(zip((1, 0, 1), (30, 31, 32))):
        full, _ = m(torch.tensor([rows[src] + [tok]]))
        assert torch.allclose(got[r], full[0, -1], atol=1e-4)


def test_left_padded_batch_greedy_equals_single_generation():
    from budgetlm.generate import generate_batch

    m = tiny_lm(seq=32)
    single = [list(generate_tokens(m, p, 20, temperature=0)) for p in PROMPTS]
    assert len({tuple(s) for s in single}) > 2  # the rows really differ
    assert _rows(generate_batch(m, PROMPTS, 20, temperature=0), len(PROMPTS)) == single


def test_batch_rows_stop_on_their_own_and_leave_the_batch():
    from budgetlm.generate import generate_batch

    m = tiny_lm(seq=32)
    single = [list(generate_tokens(m, p, 12, temperature=0)) for p in PROMPTS]
    stop = single[0][3]  # row 0 ends before its 4th token; other rows end where they meet it
    want = [s[:s.index(stop)] if stop in s else s for s in single]
    steps = list(generate_batch(m, PROMPTS, 12, temperature=0, stop_ids=[stop]))
    assert _rows(steps, len(PROMPTS)) == want
    assert len(steps) == max(len(w) for w in want) + (1 if all(stop in s for s in single) else 0)
    assert all(step.tokens[0] is None for step in steps[3:])  # an ended row stays ended


def test_seeded_batch_sampling_equals_seeded_single_sampling():
    from budgetlm.generate import generate_batch

    m = tiny_lm(seq=32)
    single = [list(generate_tokens(m, p, 15, temperature=1.0, top_k=20,
                                   generator=torch.Generator().manual_seed(i))) for i, p in enumerate(PROMPTS)]
    gens = [torch.Generator().manual_seed(i) for i in range(len(PROMPTS))]
    batch = _rows(generate_batch(m, PROMPTS, 15, temperature=1.0, top_k=20, generators=gens), len(PROMPTS))
    assert batch == single


def test_batch_runs_past_the_context_window_and_reports_logprobs():
    from budgetlm.generate import generate_batch

    m = tiny_lm(seq=8)
    steps = list(generate_batch(m, [list(range(1, 12)), [3]], 30, temperature=0, logprobs=True))
    assert [len(r) for r in _rows(steps, 2)] == [30, 30]
    lp = steps[0].logprobs[0]
    assert lp.shape == (V,) and torch.exp(lp).sum().item() == pytest.approx(1.0, abs=1e-5)
    assert int(lp.argmax()) == steps[0].tokens[0]  # greedy picks the most likely token


def test_complete_batch_matches_complete_in_order(run_dir):
    from budgetlm.generate import complete, complete_batch, load_causal

    model, tok, _ = load_causal(str(run_dir()))
    prompts = ["To be", "", "or not to be, that is", "é"]
    for kw in ({"temperature": 0}, {"temperature": 1.0, "top_k": 30, "seed": 5}):
        batch = complete_batch(model, tok, prompts, max_new_tokens=10, batch_size=3, **kw)
        alone = [complete(model, tok, p, max_new_tokens=10, **kw) for p in prompts]
        assert [(c.text, c.tokens, c.prompt_tokens, c.finish_reason) for c in batch] == \
               [(c.text, c.tokens, c.prompt_tokens, c.finish_reason) for c in alone]


def test_generate_command_input_file_to_jsonl(run_dir, tmp_path, capsys):
    run = str(run_dir())
    txt = tmp_path / "prompts.txt"
    txt.write_text("To be\n\nor not\nhé\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    argv = ["generate", "--model", run, "--input", str(txt), "--output", str(out), "--max-new-tokens", "6",
            "--temperature", "0", "--batch-size", "2", "--json"]
    assert main(argv) == 0
    summary = _json(capsys)
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert summary["prompts"] == 3 and [r["prompt"] for r in rows] == ["To be", "or not", "hé"]
    for r in rows:
        assert main(["generate", "--model", run, "--prompt", r["prompt"], "--max-new-tokens", "6",
                     "--temperature", "0", "--json"]) == 0
        assert r["completion"] == _json(capsys)["text"]
        assert r["finish_reason"] in ("stop", "length") and r["tokens"] <= 6
    jl = tmp_path / "prompts.jsonl"
    jl.write_text(json.dumps({"id": 7, "prompt": "To be"}) + "\n\n" + json.dumps({"id": 8, "prompt": "hé"}) + "\n")
    assert main(["generate", "--model", run, "--input", str(jl), "--output", str(out), "--max-new-tokens", "6",
                 "--temperature", "0"]) == 0
    capsys.readouterr()
    rows2 = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [(r["id"], r["completion"]) for r in rows2] == [(7, rows[0]["completion"]), (8, rows[2]["completion"])]
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".")] == []  # no temporary left behind


@pytest.mark.parametrize("content,flags,needle", [
    ('{"prompt": "a"}\nnot json\n', [], "line 2 is not JSON"),
    ('{"text": "a"}\n', [], 'line 1 needs a "prompt"'),
    ('{"prompt": "\\ud800"}\n', [], "line 1 holds a lone surrogate"),
    ("\n\n", [], "holds no prompts"),
    ('{"prompt": "a"}\n', ["--batch-size", "0"], "--batch-size"),
    ('{"prompt": "a"}\n', ["--prompt", "x"], "exclusive"),
    (None, [], "does not exist"),
])
def test_generate_command_input_errors_are_one_line(run_dir, tmp_path, capsys, content, flags, needle):
    run = str(run_dir())
    src = tmp_path / "p.jsonl"
    if content is not None:
        src.write_text(content, encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--model", run, "--input", str(src), "--output", str(out), *flags]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
    assert not out.exists()
    assert main(["generate", "--model", run, "--output", str(out)]) == 2
    assert "--input and --output go together" in capsys.readouterr().err


def test_loaded_model_generate_batch(run_dir):
    import budgetlm

    loaded = budgetlm.load(str(run_dir()))
    prompts = ["To be", "or"]
    texts = loaded.generate_batch(prompts, max_new_tokens=5, temperature=0)
    assert texts == [loaded.generate(p, max_new_tokens=5, temperature=0) for p in prompts]
