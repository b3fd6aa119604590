"""Checkpoints: round trip, keep-last-N + best, atomic under SIGKILL mid-save, corrupt files."""

import json
import signal
import subprocess
import sys
import textwrap

import pytest
import torch

from budgetlm.config import BudgetError
from budgetlm.models.config import ModelConfig
from budgetlm.models.transformer import build_model
from budgetlm.training import checkpoint as ck
from train_helpers import lm_meta, one_thread, subprocess_env  # noqa: F401

CFG = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, max_seq_len=16)
META = lm_meta(CFG, run_config={"lr": 1e-3})


def model(seed=0):
    torch.manual_seed(seed)
    return build_model(CFG)


def same_weights(a, b):
    return all(torch.equal(x, y) for x, y in zip(a.state_dict().values(), b.state_dict().values()))


def test_round_trip_and_load_model(tmp_path):
    m = model()
    (tmp_path / "tok.json").write_text("{}")
    path = ck.save_checkpoint(tmp_path, 7, m, META, {"loop": {"step": 7}}, tmp_path / "tok.json")
    assert path.name == "step_000007" and (path / "tokenizer.json").exists()
    loaded, meta = ck.load_model(tmp_path)
    assert same_weights(m, loaded) and meta.step == 7 and not loaded.training
    assert meta.tokenizer_path.endswith("tokenizer.json") and meta.run_config == {"lr": 1e-3}
    assert ck.load_state(meta)["loop"]["step"] == 7
    assert ck.load_model(path)[1].step == 7  # a checkpoint directory works too


def test_keep_last_and_best(tmp_path):
    m = model()
    for step, vl in ((1, 3.0), (2, 1.0), (3, 2.0), (4, 2.5), (5, None)):
        ck.save_checkpoint(tmp_path, step, m, META, keep_last=2, val_loss=vl)
    names = [p.name for p in ck.list_checkpoints(tmp_path)]
    assert names == ["step_000002", "step_000004", "step_000005"]  # best (2) + last two
    assert ck.read_best(tmp_path)["step"] == 2
    assert ck.resolve_checkpoint(tmp_path, "best").name == "step_000002"
    assert ck.resolve_checkpoint(tmp_path).name == "step_000005"


def test_kill_during_save_keeps_previous_checkpoint(tmp_path):
    """A real SIGKILL in the middle of writing step 2: step 1 still loads, the debris is ignored."""
    m = model(1)
    ck.save_checkpoint(tmp_path, 1, m, META)
    script = textwrap.dedent(f"""
        import os, signal, torch
        from budgetlm.training import checkpoint as ck
        from budgetlm.models.config import ModelConfig
        from budgetlm.models.transformer import build_model
        from budgetlm.training import statefile
        real = statefile.save_state
        def dying_save(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)  # after model.safetensors and the state, before rename
        statefile.save_state = dying_save
        cfg = ModelConfig(**{CFG.__dict__!r})
        meta = ck.CheckpointMeta(kind="lm", model_config=cfg.__dict__)
        ck.save_checkpoint({str(tmp_path)!r}, 2, build_model(cfg), meta, {{"x": torch.ones(3)}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".tmp-step_000002") for p in (tmp_path / "checkpoints").iterdir())
    loaded, meta = ck.load_model(tmp_path)
    assert meta.step == 1 and same_weights(m, loaded)


def test_missing_and_corrupt_checkpoints(tmp_path):
    with pytest.raises(BudgetError, match="no model at"):
        ck.load_model(tmp_path / "nope")
    with pytest.raises(BudgetError, match="no checkpoint"):
        ck.load_model(tmp_path)
    path = ck.save_checkpoint(tmp_path, 1, model(), META)
    (path / "model.safetensors").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(BudgetError, match="corrupt"):
        ck.load_model(tmp_path)
    (path / "meta.json").write_text("{not json")
    with pytest.raises(BudgetError, match="corrupt"):
        ck.load_model(tmp_path)
    with pytest.raises(BudgetError, match="no training state"):
        ck.load_state(ck.CheckpointMeta(kind="lm", model_config={}, path=str(path)))


def test_mismatched_weights_are_refused(tmp_path):
    path = ck.save_checkpoint(tmp_path, 1, model(), META)
    meta = json.loads((path / "meta.json").read_text())
    meta["model_config"]["n_layer"] = 3
    meta["checksums"] = {}
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BudgetError, match="does not match"):
        ck.load_model(tmp_path)


def test_registered_model_kinds_build():
    """Every kind a checkpoint can hold builds a module from its saved shape (the kinds live with
    their models: models.kinds and hf)."""
    from budgetlm.config import to_dict

    head = {"labels": ["a", "b", "c"], "pooling": None}
    tiny_bert = {"model_type": "bert", "vocab_size": 64, "hidden_size": 32, "num_hidden_layers": 1,
                 "num_attention_heads": 2, "intermediate_size": 64, "num_labels": 3}
    configs = {"lm": CFG.__dict__, "classifier": to_dict(CFG), "hf-classifier": tiny_bert,
               "qa": {**to_dict(CFG), "causal": False},
               "hf-qa": {k: v for k, v in tiny_bert.items() if k != "num_labels"}}
    assert set(configs) == set(ck.MODEL_KINDS)
    for kind, builder in ck.MODEL_KINDS.items():
        m = builder(configs[kind], head)
        assert isinstance(m, torch.nn.Module), kind
        assert getattr(m, "num_labels", 3) == 3
    (start, end), _ = ck.MODEL_KINDS["qa"](configs["qa"], {})(torch.randint(0, CFG.vocab_size, (2, 8)))
    assert start.shape == end.shape == (2, 8)  # a start and an end score per token
    (start, end), _ = ck.MODEL_KINDS["hf-qa"](configs["hf-qa"], {})(torch.randint(0, 64, (2, 8)))
    assert start.shape == end.shape == (2, 8)


def test_state_is_not_a_pickle_and_round_trips(tmp_path):
    """Resumable state is JSON + safetensors: tuples, int-keyed dicts, numpy arrays and tensors come
    back as they were saved, and a pickled state.pt beside them is never loaded."""
    import random as pyrandom

    import numpy as np

    from budgetlm import runtime
    from budgetlm.training.optim import OptimConfig, build_optimizer

    m = model()
    opt = build_optimizer("muon", m, OptimConfig())
    m(torch.randint(0, 64, (2, 8)), targets=torch.randint(0, 64, (2, 8)))[1].backward()
    opt.step()
    state = {"optimizer": opt.state_dict(), "rng": runtime.rng_state(), "loop": {"step": 3},
             "loader": {"rng": np.random.default_rng(1).bit_generator.state, "position": 5}}
    path = ck.save_checkpoint(tmp_path, 3, m, META, state)
    assert not (path / "state.pt").exists()
    back = ck.load_state(ck.load_meta(tmp_path))
    opt2 = build_optimizer("muon", model(), OptimConfig())
    opt2.load_state_dict(back["optimizer"])  # int-keyed state and tuple hyper-parameters survive
    runtime.set_rng_state(back["rng"])
    assert pyrandom.random() == (runtime.set_rng_state(state["rng"]) or pyrandom.random())
    assert back["loader"]["rng"] == state["loader"]["rng"]


def test_a_crafted_pickle_in_a_run_folder_never_runs(tmp_path):
    """A downloaded run whose state.pt carries a payload: resuming refuses it without unpickling."""
    import pickle

    path = ck.save_checkpoint(tmp_path, 1, model(), META, {"loop": {"step": 1}})
    marker = tmp_path / "pwned"

    class Payload:
        def __reduce__(self):
            return (open, (str(marker), "w"))

    (path / "state.pt").write_bytes(pickle.dumps(Payload()))
    for name in ("state.json", "state.safetensors"):
        (path / name).unlink()
    with pytest.raises(BudgetError, match="pickle"):
        ck.load_state(ck.load_meta(tmp_path))
    assert not marker.exists()


def test_checksums_name_a_damaged_file(tmp_path):
    path = ck.save_checkpoint(tmp_path, 1, model(), META, {"loop": {"step": 1}})
    data = bytearray((path / "model.safetensors").read_bytes())
    data[-5] ^= 0xFF  # one flipped byte in the weights
    (path / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(BudgetError, match="model.safetensors does not match its checksum"):
        ck.load_model(tmp_path)


def test_non_finite_weights_are_refused(tmp_path):
    m = model()
    with torch.no_grad():
        m.blocks[0].attn.qkv.weight[0, 0] = float("nan")
    ck.save_checkpoint(tmp_path, 1, m, META)
    with pytest.raises(BudgetError, match="NaN or infinite"):
        ck.load_model(tmp_path)


def test_format_1_metadata_still_loads(tmp_path):
    """meta.json as budgetlm wrote it before CheckpointMeta: a flat dict."""
    path = ck.save_checkpoint(tmp_path, 4, model(), META)
    old = {"format_version": 1, "step": 4, "model_kind": "lm", "model_config": CFG.__dict__,
           "run_config": {"lr": 1e-3}, "objective": "causal", "metrics": {}}
    (path / "meta.json").write_text(json.dumps(old))
    loaded, meta = ck.load_model(tmp_path)
    assert meta.kind == "lm" and meta.step == 4 and meta.run_config == {"lr": 1e-3}
    clf = {"format_version": 1, "model_kind": "classifier", "backbone": "hf", "model_config": {},
           "labels": ["a", "b"], "max_len": 16, "finetune_config": {"lr": 1}, "val_metrics": {"accuracy": 1.0}}
    m2 = ck.CheckpointMeta.from_json(clf)
    assert m2.kind == "hf-classifier" and m2.classifier.labels == ["a", "b"] and m2.classifier.truncate == "head"
    assert m2.metrics == {"accuracy": 1.0} and m2.run_config == {"lr": 1}
    with pytest.raises(BudgetError, match="format version 9"):
        ck.CheckpointMeta.from_json({**old, "format_version": 9})
