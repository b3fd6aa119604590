"""A local Hugging Face Llama folder as a budgetlm model source (`budgetlm.hfmodels`): logits equal to
transformers', and `generate`, `eval`, `serve`, `train --init-from` and `finetune` on it.

Run: .venv/bin/python -m pytest tests/test_hfmodels.py -q
"""

from __future__ import annotations

import dataclasses
import json
import shutil
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from budgetlm.cli import main  # noqa: E402
from train_helpers import make_text, one_thread  # noqa: E402,F401

TEXT = "the king and queen of the castle speak at night"
FLAGS = ["--seq-len", "32", "--batch-size", "4", "--precision", "fp32", "--device", "cpu", "--log-every", "1",
         "--eval-tokens", "256"]


def _tokenizer(folder: Path):
    """A Llama-style byte-level BPE (<unk>, <s>, </s>; none of budgetlm's special tokens), trained here."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=320, special_tokens=["<unk>", "<s>", "</s>"],
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator([make_text(4000, seed) for seed in range(3)], trainer)
    fast = transformers.PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>",
                                                unk_token="<unk>")
    fast.save_pretrained(str(folder))
    return tok


def make_llama(folder: Path, tie: bool = False, kv_heads: int = 2, **config) -> Path:
    """A tiny LlamaForCausalLM written by transformers' save_pretrained (2 layers, width 32)."""
    tok = _tokenizer(folder)
    cfg = transformers.LlamaConfig(
        vocab_size=tok.get_vocab_size(), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=kv_heads, max_position_embeddings=64, tie_word_embeddings=tie,
        rope_parameters={"rope_type": "default", "rope_theta": 5000.0}, rms_norm_eps=1e-6,
        bos_token_id=tok.token_to_id("<s>"), eos_token_id=tok.token_to_id("</s>"), **config)
    torch.manual_seed(0)
    model = transformers.LlamaForCausalLM(cfg)
    with torch.no_grad():  # larger weights than the 0.02 init: logits that differ, greedy paths that vary
        for p in model.parameters():
            if p.ndim == 2:
                p.mul_(8)
    model.save_pretrained(str(folder))
    return folder


@pytest.fixture(scope="module")
def llama(tmp_path_factory) -> Path:
    return make_llama(tmp_path_factory.mktemp("llama"))


def _hf(folder: Path):
    return transformers.AutoModelForCausalLM.from_pretrained(str(folder), dtype=torch.float32).eval()


def _ids(folder: Path, text: str = TEXT) -> list[int]:
    from budgetlm.data.tokenizer import load_tokenizer

    return load_tokenizer(folder).encode(text, add_special_tokens=False).ids


@pytest.mark.parametrize("tie,kv_heads", [(False, 2), (True, 4), (False, 1)])
def test_logits_equal_transformers(tmp_path, tie, kv_heads):
    """Grouped-query (2 or 1 key/value heads for 4 query heads) and plain attention, tied and untied."""
    import budgetlm

    folder = make_llama(tmp_path / "llama", tie=tie, kv_heads=kv_heads)
    loaded = budgetlm.load(folder)
    assert loaded.kind == "causal" and loaded.meta.origin == "hf" and loaded.meta.run_dir == folder.resolve()
    assert loaded.model.cfg.rope_theta == 5000.0 and loaded.model.cfg.tie_embeddings == tie
    ids = torch.tensor([_ids(folder), _ids(folder)[::-1]])
    mask = torch.ones_like(ids)
    mask[1, 6:] = 0
    with torch.no_grad():
        ours, _ = loaded.model(ids, attention_mask=mask)
        theirs = _hf(folder)(input_ids=ids, attention_mask=mask).logits
    assert ours.shape == theirs.shape and ours.std() > 0.5
    assert (ours - theirs)[mask.bool()].abs().max() < 1e-4


def test_a_transformers_4_config_reads_the_same(llama, tmp_path):
    """transformers 4 writes the rope base as `rope_theta` (and `rope_scaling: null`), 5 as `rope_parameters`."""
    from budgetlm.training.checkpoint import load_meta

    folder = tmp_path / "v4"
    shutil.copytree(llama, folder)
    cfg = json.loads((folder / "config.json").read_text())
    theta = cfg.pop("rope_parameters")["rope_theta"]
    (folder / "config.json").write_text(json.dumps({**cfg, "rope_theta": theta, "rope_scaling": None}))
    assert load_meta(folder).model_config == load_meta(llama).model_config
    assert load_meta(folder).model_config["rope_theta"] == 5000.0


def test_generate_and_serve_equal_transformers_greedy(llama, capsys):
    from fastapi.testclient import TestClient

    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.serve import ServeConfig, create_app, load_service

    prompt = _ids(llama)[:5]
    with torch.no_grad():
        theirs = _hf(llama).generate(torch.tensor([prompt]), max_new_tokens=10, do_sample=False, eos_token_id=None,
                                     pad_token_id=0)[0, 5:].tolist()
    text = load_tokenizer(llama).decode(prompt)
    assert main(["generate", "--model", str(llama), "--prompt", text, "--temperature", "0",
                 "--max-new-tokens", "10", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["tokens"] == 10 and res["text"] == load_tokenizer(llama).decode(theirs) and len(set(theirs)) > 1

    client = TestClient(create_app(load_service(str(llama)), ServeConfig()))
    body = client.post("/v1/completions", json={"prompt": text, "max_tokens": 10, "temperature": 0}).json()
    assert body["choices"][0]["text"] == res["text"]
    # the folder's tokenizer has no end-of-text token: an empty prompt has nothing to start from
    for prompt in ("", ["", text]):
        r = client.post("/v1/completions", json={"prompt": prompt, "max_tokens": 4})
        assert r.status_code == 400 and "empty" in r.json()["detail"] and r.json()["error"]["param"] == "prompt"


def test_eval_on_text_equals_transformers_loss(llama, tmp_path, capsys):
    (tmp_path / "t.txt").write_text(TEXT)
    assert main(["eval", "--model", str(llama), "--text", str(tmp_path / "t.txt"), "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    ids = torch.tensor([_ids(llama)])
    with torch.no_grad():
        loss = float(_hf(llama)(input_ids=ids, labels=ids).loss)
    assert res["loss"] == pytest.approx(loss, abs=1e-5) and res["bytes"] == len(TEXT)


def _weights(run: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors"))


def test_train_init_from_a_folder_grows_the_vocabulary_for_prepares_tokens(llama, tmp_path, capsys):
    from budgetlm.data.prepare import PrepareConfig, prepare_dataset
    from budgetlm.hfmodels import load_state_dict

    (tmp_path / "train.txt").write_text(make_text(3000, 5))
    (tmp_path / "val.txt").write_text(make_text(600, 6))
    data = tmp_path / "data"
    prepare_dataset([str(tmp_path / "train.txt")], str(data), PrepareConfig(tokenizer_from=str(llama)),
                    [str(tmp_path / "val.txt")])
    n = transformers.AutoConfig.from_pretrained(llama).vocab_size
    added = json.loads((data / "manifest.json").read_text())["tokenizer"]["vocab_size"] - n
    assert added == 6  # budgetlm's special tokens, after the folder's ids
    run = tmp_path / "run"
    assert main(["train", "--data", str(data), "--out", str(run), "--init-from", str(llama), "--max-steps", "2",
                 "--lr", "1e-12", *FLAGS, "--json"]) == 0, capsys.readouterr().err
    res = json.loads(capsys.readouterr().out)
    assert res["steps"] == 2
    start, trained = load_state_dict(llama), _weights(run)
    assert trained["embed.weight"].shape == (n + added, 32)
    assert torch.allclose(trained["embed.weight"][:n], start["embed.weight"], atol=1e-6)
    assert torch.allclose(trained["embed.weight"][n:], start["embed.weight"].mean(0).expand(added, -1), atol=1e-6)
    for k in start:  # a vanishing LR: every other weight as the folder had it
        if k not in ("embed.weight", "lm_head.weight"):
            assert torch.allclose(trained[k], start[k], atol=1e-6), k
    # the trained run is a budgetlm run like any other: it generates and stops at its end-of-text token
    assert main(["generate", "--model", str(run), "--prompt", "the king", "--max-new-tokens", "3", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["prompt_tokens"] == len(_ids(llama, "the king"))


def test_init_from_refuses_data_tokenized_otherwise(llama, tmp_path, capsys):
    from train_helpers import make_dataset

    data = make_dataset(tmp_path)  # budgetlm's byte tokenizer
    assert main(["train", "--data", str(data), "--out", str(tmp_path / "run"), "--init-from", str(llama),
                 "--max-steps", "1", *FLAGS]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and f"--tokenizer-from {llama}" in err
    assert not (tmp_path / "run").exists()


def test_an_export_loads_back_with_the_same_logits(tmp_path, capsys):
    """Both ways: a budgetlm run -> export -> the folder as a model source -> the same model."""
    import budgetlm
    from budgetlm.data.tokenizer import save_tokenizer, train_tokenizer
    from budgetlm.models.config import ModelConfig
    from budgetlm.models.transformer import Transformer
    from budgetlm.training.checkpoint import save_checkpoint
    from train_helpers import lm_meta

    tok = train_tokenizer("bpe", iter([make_text(2000)]), vocab_size=300)
    save_tokenizer(tok, tmp_path / "tokenizer.json")
    torch.manual_seed(0)
    cfg = ModelConfig(vocab_size=tok.get_vocab_size(), n_layer=2, n_embd=32, n_head=2, max_seq_len=64,
                      rope_theta=20000.0, tie_embeddings=False)
    model = Transformer(cfg).eval()
    save_checkpoint(tmp_path / "run", 1, model, lm_meta(cfg), tokenizer_path=tmp_path / "tokenizer.json")
    assert main(["export", "--model", str(tmp_path / "run"), "--out", str(tmp_path / "hf")]) == 0
    back = budgetlm.load(tmp_path / "hf")
    assert back.model.cfg == dataclasses.replace(cfg, intermediate_size=cfg.ffn_dim)  # the resolved MLP width
    ids = torch.tensor([tok.encode(TEXT).ids])
    with torch.no_grad():
        assert torch.equal(back.model(ids)[0], model(ids)[0])
    assert back.generate("the king", max_new_tokens=5, temperature=0) == \
        budgetlm.load(tmp_path / "run").generate("the king", max_new_tokens=5, temperature=0)


def test_finetune_on_a_llama_folder(llama, tmp_path, capsys):
    rows = [{"text": t, "label": "crown" if "crown" in t else "none"} for t in make_text(800, 7).splitlines()]
    (tmp_path / "d.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
    assert main(["finetune", "--model", str(llama), "--train", str(tmp_path / "d.jsonl"), "--out",
                 str(tmp_path / "clf"), "--epochs", "1", "--device", "cpu", "--precision", "fp32", "--json"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["backbone"] == "hf" and res["labels"] == ["crown", "none"] and res["steps"] >= 1


def _edit_config(folder: Path, **changes) -> None:
    path = folder / "config.json"
    cfg = json.loads(path.read_text())
    cfg.update(changes)
    path.write_text(json.dumps(cfg))


def _rename_tensor(folder: Path, old: str, new: str) -> None:
    from safetensors.torch import load_file, save_file

    sd = load_file(str(folder / "model.safetensors"))
    sd[new] = sd.pop(old) if old else torch.zeros(32)
    save_file(sd, str(folder / "model.safetensors"))


REFUSED = {
    "architecture": (lambda f: _edit_config(f, architectures=["MistralForCausalLM"], model_type="mistral"),
                     "MistralForCausalLM; budgetlm loads Hugging Face folders of LlamaForCausalLM only"),
    "rope scaling": (lambda f: _edit_config(f, rope_parameters={"rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0}),
                     "rope scaling 'llama3'"),
    "old rope scaling": (lambda f: _edit_config(f, rope_scaling={"type": "linear", "factor": 2.0}), "rope scaling 'linear'"),
    "bias": (lambda f: _edit_config(f, attention_bias=True), "attention biases"),
    "activation": (lambda f: _edit_config(f, hidden_act="gelu"), "activation 'gelu'"),
    "head size": (lambda f: _edit_config(f, head_dim=16), "heads of 16 channels"),
    "pickle": (lambda f: (f / "model.safetensors").rename(f / "pytorch_model.bin"), "pickled weights"),
    "missing tensor": (lambda f: _rename_tensor(f, "model.norm.weight", "model.final.weight"), "lacks the tensor model.norm.weight"),
    "untied head": (lambda f: _rename_tensor(f, "lm_head.weight", "score.weight"), "lacks lm_head.weight"),
    "extra tensor": (lambda f: _rename_tensor(f, "", "model.layers.0.self_attn.q_proj.bias"),
                     "no place for, e.g. model.layers.0.self_attn.q_proj.bias"),
}


@pytest.mark.parametrize("case", sorted(REFUSED))
def test_what_budgetlm_does_not_implement_is_one_line(llama, tmp_path, capsys, case):
    folder = tmp_path / "llama"
    shutil.copytree(llama, folder)
    edit, needle = REFUSED[case]
    edit(folder)
    assert main(["generate", "--model", str(folder), "--prompt", "the", "--max-new-tokens", "2"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and needle in err, err
