"""Pruning (`budgetlm prune`, budgetlm.prune) on tiny models built in-process (CPU, seconds)."""

import dataclasses
import json

import pytest
import torch

from budgetlm.cli import main
from budgetlm.config import to_dict
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import num_params
from budgetlm.prune import keep_count, prune_structured, taylor_scores, weight_scores
from train_helpers import lm_meta, make_dataset, one_thread  # noqa: F401 - one_thread is an autouse fixture

WIDTH, HEADS = 64, 4  # head size 16; MLP 192 channels


@pytest.fixture(scope="module")
def ds(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"), n_words=3000)


def tiny_cfg(ds_path, causal=True):
    from budgetlm.data.shards import Dataset

    return ModelConfig(vocab_size=Dataset.open(ds_path).vocab_size, n_layer=2, n_embd=WIDTH, n_head=HEADS,
                       max_seq_len=32, causal=causal)


def save_run(root, name, model, meta, ds_path):
    from budgetlm.data.shards import Dataset
    from budgetlm.training.checkpoint import save_checkpoint

    run = root / name
    save_checkpoint(run, 3, model, meta, tokenizer_path=Dataset.open(ds_path).tokenizer_path)
    return run


@pytest.fixture(scope="module")
def runs(tmp_path_factory, ds):
    """A causal LM, a masked LM and a (masked-backbone) classifier, random weights."""
    from budgetlm.models.heads import SequenceClassifier
    from budgetlm.models.transformer import build_model
    from budgetlm.training.checkpoint import CheckpointMeta, ClassifierInfo

    root = tmp_path_factory.mktemp("runs")
    torch.manual_seed(0)
    out = {}
    for causal in (True, False):
        cfg = tiny_cfg(ds, causal)
        kind = "causal" if causal else "masked"
        out[kind] = save_run(root, kind, build_model(cfg), lm_meta(cfg, data=str(ds)), ds)
    cfg = tiny_cfg(ds, False)
    meta = CheckpointMeta(kind="classifier", model_config=to_dict(cfg), objective="classification",
                          classifier=ClassifierInfo(labels=["neg", "pos"], max_len=24, pooling="cls"))
    out["classifier"] = save_run(root, "clf", SequenceClassifier(cfg, 2), meta, ds)
    return out


def prune_cli(capsys, *argv):
    code = main(["prune", "--json", *map(str, argv)])
    out, err = capsys.readouterr()
    return code, (json.loads(out) if code == 0 else None), err


def load(run):
    from budgetlm.training.checkpoint import load_model

    return load_model(run)


# --------------------------------------------------------------------------------------------------
# structured pruning: shapes, parameter counts, every command loads the result


@pytest.mark.parametrize("kind", ["causal", "masked"])
def test_structured_prune_gives_a_smaller_dense_run_that_loads_and_evaluates(runs, ds, tmp_path, capsys, kind):
    from budgetlm import api
    from budgetlm.planning.memory import param_groups

    out = tmp_path / f"pruned-{kind}"
    code, res, err = prune_cli(capsys, "--model", runs[kind], "--out", out, "--sparsity", 0.25)
    assert code == 0, err
    I = ModelConfig(n_embd=WIDTH).ffn_dim
    assert res["n_head"] == [HEADS, 3] and res["ffn_dim"] == [I, I - round(0.25 * I)]
    loaded = api.load(out)
    cfg = loaded.model.cfg
    assert (cfg.n_embd, cfg.n_head, cfg.head_dim, cfg.attn_dim, cfg.ffn_dim) == (WIDTH, 3, 16, 48, 144)
    assert loaded.model.blocks[0].attn.qkv.weight.shape == (3 * 48, WIDTH)
    assert loaded.model.blocks[0].mlp.w_in.weight.shape == (2 * 144, WIDTH)
    n = sum(p.numel() for p in loaded.model.parameters())
    assert res["params_after"] == n == num_params(cfg) == param_groups(cfg)["total"] < res["params_before"]
    metrics = loaded.evaluate(data=str(ds), max_tokens=256)
    assert metrics["loss"] > 0 and metrics["objective"] == kind
    assert main(["eval", "--json", "--model", str(out), "--data", str(ds), "--max-tokens", "128",
                 "--device", "cpu"]) == 0
    assert json.loads(capsys.readouterr().out)["loss"] > 0
    if kind == "causal":
        assert isinstance(loaded.generate("the king", max_new_tokens=5, seed=0), str)
        assert main(["generate", "--json", "--model", str(out), "--prompt", "the", "--max-new-tokens", "4",
                     "--device", "cpu"]) == 0
        capsys.readouterr()
    assert json.loads((out / "prune.json").read_text())["params_after"] == n


def test_sparsity_zero_keeps_the_model_and_its_logits(runs):
    for kind in ("causal", "masked", "classifier"):
        model, meta = load(runs[kind])
        pruned, new_meta, kept = prune_structured(model, meta, 0.0)
        assert new_meta.model_config == meta.model_config
        assert all(len(h) == HEADS for h, _ in kept)
        idx = torch.randint(0, int(meta.model_config["vocab_size"]), (2, 12))
        with torch.no_grad():
            assert torch.equal(model(idx)[0], pruned(idx)[0])


def zero_units(model, heads, channels):
    """Zero the weights of head heads[i] and of the given MLP channels in every block i."""
    from budgetlm.prune import transformer_of

    tf = transformer_of(model)
    H, D, I = tf.cfg.n_head, tf.cfg.head_dim, tf.cfg.ffn_dim
    with torch.no_grad():
        for b, h in zip(tf.blocks, heads):
            b.attn.qkv.weight.view(3, H, D, -1)[:, h] = 0
            b.attn.proj.weight.view(-1, H, D)[:, h] = 0
            b.mlp.w_in.weight.view(2, I, -1)[:, channels] = 0
            b.mlp.w_out.weight[:, channels] = 0


@pytest.mark.parametrize("importance", ["weights", "activations"])
def test_the_units_removed_are_the_unimportant_ones(runs, ds, importance):
    """Zeroed heads and channels score lowest, are the ones removed, and removing them changes no logit."""
    from budgetlm.prune import PruneConfig, lm_batches

    model, meta = load(runs["causal"])
    I = model.cfg.ffn_dim
    dead = list(range(5, 5 + I - keep_count(I, 0.25)))  # exactly the channels 25% removes
    zero_units(model, heads=[1, 3], channels=dead)
    if importance == "weights":
        scores = weight_scores(model)
    else:
        scores = taylor_scores(model, lm_batches(PruneConfig(batches=2, batch_size=4, seq_len=16), meta))
    assert float(scores[0][0][1]) == 0 and float(scores[1][0][3]) == 0 and scores[0][0].min() == 0
    pruned, _, kept = prune_structured(model, meta, 0.25, scores)
    assert [h for h, _ in kept] == [[0, 2, 3], [0, 1, 2]]
    assert all(not set(c) & set(dead) and len(c) == I - len(dead) for _, c in kept)
    idx = torch.randint(0, model.cfg.vocab_size, (2, 16))
    with torch.no_grad():
        torch.testing.assert_close(pruned(idx)[0], model(idx)[0], rtol=1e-5, atol=1e-5)


def test_activation_importance_through_the_cli(runs, ds, tmp_path, capsys):
    code, res, err = prune_cli(capsys, "--model", runs["masked"], "--out", tmp_path / "p", "--sparsity", 0.5,
                               "--importance", "activations", "--batches", 2, "--batch-size", 2, "--device", "cpu")
    assert code == 0, err
    assert res["importance"] == "activations" and res["n_head"] == [HEADS, 2]


def test_classifier_prunes_and_classifies(runs, tmp_path, capsys):
    from budgetlm import api

    out = tmp_path / "clf-pruned"
    code, res, err = prune_cli(capsys, "--model", runs["classifier"], "--out", out, "--sparsity", 0.5)
    assert code == 0, err
    assert res["kind"] == "classifier" and res["n_head"] == [HEADS, 2]
    loaded = api.load(out)
    assert loaded.kind == "classifier" and loaded.model.backbone.cfg.n_head == 2
    (row,) = loaded.classify(["the king speaks"])
    assert row["label"] in ("neg", "pos") and sum(row["probs"].values()) == pytest.approx(1.0)
    code, _, err = prune_cli(capsys, "--model", runs["classifier"], "--out", tmp_path / "x",
                             "--importance", "activations")
    assert code == 2 and "needs a language model" in err


def test_recovery_trains_the_pruned_model_through_train(runs, ds, tmp_path, capsys):
    out = tmp_path / "recovered"
    code, res, err = prune_cli(capsys, "--model", runs["causal"], "--out", out, "--sparsity", 0.5,
                               "--recover-budget", "2s", "--device", "cpu")
    assert code == 0, err
    assert res["recovered"]["steps"] >= 1 and res["recovered"]["params"] == res["params_after"]
    model, meta = load(out)
    assert model.cfg.n_head == 2 and model.cfg.head_dim == 16
    assert sorted(p.name for p in tmp_path.iterdir()) == ["recovered"]  # the staged copy is gone
    # the recovered run is an --overwrite-able prune output
    code, _, err = prune_cli(capsys, "--model", runs["causal"], "--out", out, "--overwrite")
    assert code == 0, err


# --------------------------------------------------------------------------------------------------
# the magnitude baseline


def test_magnitude_zeroes_the_fraction_and_keeps_shapes(runs, tmp_path, capsys):
    from budgetlm.prune import block_linears

    out = tmp_path / "mag"
    code, res, err = prune_cli(capsys, "--model", runs["causal"], "--out", out, "--method", "magnitude",
                               "--sparsity", 0.5)
    assert code == 0, err
    assert "saves no time" in res["note"] and "saves no time" in err
    before, _ = load(runs["causal"])
    model, _ = load(out)
    assert model.cfg == before.cfg
    linears = block_linears(model)
    total = sum(m.weight.numel() for m in linears)
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    assert zeros == round(0.5 * total) and res["zeroed_fraction"] == pytest.approx(0.5)
    # the survivors are the largest weights, unchanged
    kept = torch.cat([m.weight.flatten() for m in linears])
    orig = torch.cat([m.weight.flatten() for m in block_linears(before)])
    assert torch.equal(kept[kept != 0], orig[kept != 0])
    assert orig[kept == 0].abs().max() <= orig[kept != 0].abs().min()


# --------------------------------------------------------------------------------------------------
# bad input: one line, exit 2, nothing written


@pytest.mark.parametrize("argv, needle", [
    (["--sparsity", "0"], "--sparsity must be in (0, 1)"),
    (["--sparsity", "1"], "--sparsity must be in (0, 1)"),
    (["--sparsity", "-0.2"], "--sparsity must be in (0, 1)"),
    (["--sparsity", "nan"], "--sparsity must be in (0, 1)"),
    (["--method", "magnitude", "--importance", "activations"], "needs --method structured"),
    (["--method", "magnitude", "--recover-budget", "1m"], "recover structured pruning only"),
    (["--recover-budget", "soon"], "malformed duration"),
])
def test_bad_settings_are_one_line_errors(runs, tmp_path, capsys, argv, needle):
    out = tmp_path / "never"
    code = main(["prune", "--model", str(runs["causal"]), "--out", str(out), *argv])
    err = capsys.readouterr().err
    assert code == 2 and needle in err and len(err.strip().splitlines()) == 1
    assert not out.exists()


def test_missing_run_and_existing_out_are_refused(runs, tmp_path, capsys):
    code = main(["prune", "--model", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")])
    err = capsys.readouterr().err
    assert code == 2 and "no model at" in err and len(err.strip().splitlines()) == 1
    out = tmp_path / "mine"
    out.mkdir()
    (out / "keep.txt").write_text("precious")
    for extra in ([], ["--overwrite"]):
        code = main(["prune", "--model", str(runs["causal"]), "--out", str(out), *extra])
        err = capsys.readouterr().err
        assert code == 2 and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in out.iterdir()) == ["keep.txt"]
    done = tmp_path / "done"
    assert main(["prune", "--model", str(runs["causal"]), "--out", str(done)]) == 0
    assert main(["prune", "--model", str(runs["causal"]), "--out", str(done)]) == 2
    assert "pass --overwrite" in capsys.readouterr().err
    assert main(["prune", "--model", str(runs["causal"]), "--out", str(done), "--overwrite", "--sparsity", "0.5"]) == 0
    assert load(done)[0].cfg.n_head == 2


def test_help_names_every_setting(capsys):
    with pytest.raises(SystemExit) as e:
        main(["prune", "--help"])
    text = capsys.readouterr().out
    assert e.value.code == 0
    for flag in ("--sparsity", "--method", "--importance", "--recover-budget", "--data", "--overwrite"):
        assert flag in text


# --------------------------------------------------------------------------------------------------
# the shape a pruned model needs


def test_head_size_is_optional_and_old_configs_load():
    from budgetlm.models.kinds import model_config_from
    from budgetlm.planning import flops_per_token

    old = {k: v for k, v in to_dict(ModelConfig(n_embd=64, n_head=4)).items() if k != "head_size"}
    cfg = model_config_from(old)
    assert (cfg.head_size, cfg.head_dim, cfg.attn_dim) == (0, 16, 64)
    wider = dataclasses.replace(cfg, n_embd=128, n_head=2)
    assert wider.head_dim == 64  # re-derived, not kept from the narrower shape
    pruned = ModelConfig(n_embd=64, n_head=3, head_size=16, intermediate_size=96)
    assert pruned.attn_dim == 48
    with pytest.raises(ValueError):
        ModelConfig(n_embd=64, n_head=3)  # without head_size the width must divide
    with pytest.raises(ValueError):
        ModelConfig(n_embd=64, n_head=3, head_size=15)  # odd: no rotary pairs
    C, L, A, T = 64, pruned.n_layer, 48, 32
    norms = (2 * L + 1) * C
    assert flops_per_token(pruned, T) == 6 * (num_params(pruned) - norms) + 12 * L * A * T


def test_a_pruned_causal_model_exports_with_logits_parity_and_a_pruned_masked_one_is_refused(runs, tmp_path, capsys):
    pytest.importorskip("transformers")
    code, res, err = prune_cli(capsys, "--model", runs["causal"], "--out", tmp_path / "p", "--sparsity", "0.5")
    assert code == 0, err
    assert main(["export", "--model", str(tmp_path / "p"), "--out", str(tmp_path / "hf"), "--json"]) == 0
    out = json.loads(capsys.readouterr().out)
    assert out["max_abs_logit_diff"] <= 1e-4  # export verifies with transformers before finishing
    cfg = json.loads((tmp_path / "hf" / "config.json").read_text())
    assert cfg["num_attention_heads"] * cfg["head_dim"] < cfg["hidden_size"]
    code, res, err = prune_cli(capsys, "--model", runs["masked"], "--out", tmp_path / "pm", "--sparsity", "0.5")
    assert code == 0, err
    assert main(["export", "--model", str(tmp_path / "pm"), "--out", str(tmp_path / "hfm")]) == 2
    err = capsys.readouterr().err
    assert "no ModernBERT equivalent" in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "hfm").exists()


def test_a_pruned_run_serves_and_fine_tunes(runs, ds, tmp_path, capsys):
    """The other commands load a pruned run like any other: serve (causal) and finetune (masked)."""
    from fastapi.testclient import TestClient

    from budgetlm.serve import create_app
    from budgetlm.serve.services import load_service

    for kind in ("causal", "masked"):
        code, _, err = prune_cli(capsys, "--model", runs[kind], "--out", tmp_path / kind, "--sparsity", 0.5)
        assert code == 0, err
    client = TestClient(create_app(load_service(str(tmp_path / "causal"))))
    r = client.post("/v1/completions", json={"prompt": "the king", "max_tokens": 4, "temperature": 0})
    assert r.status_code == 200 and r.json()["usage"]["completion_tokens"] >= 1
    rows = ["text,label"] + [f"{'good fine' if i % 2 else 'bad poor'} words {i},{'pos' if i % 2 else 'neg'}"
                             for i in range(40)]
    (tmp_path / "l.csv").write_text("\n".join(rows))
    assert main(["finetune", "--json", "--model", str(tmp_path / "masked"), "--train", str(tmp_path / "l.csv"),
                 "--out", str(tmp_path / "clf"), "--epochs", "1", "--batch-size", "8", "--device", "cpu"]) == 0
    res = json.loads(capsys.readouterr().out)
    assert res["labels"] == ["neg", "pos"]
    assert main(["classify", "--json", "--model", str(tmp_path / "clf"), "--text", "good fine words"]) == 0
