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
