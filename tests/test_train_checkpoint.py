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
from budgetlm.train import checkpoint as ck
from train_helpers import one_thread, subprocess_env  # noqa: F401

CFG = ModelConfig(vocab_size=64, n_layer=2, n_embd=32, n_head=2, max_seq_len=16)
META = {"model_config": CFG.__dict__, "run_config": {"lr": 1e-3}, "objective": "causal"}


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
    assert same_weights(m, loaded) and meta["step"] == 7 and not loaded.training
    assert meta["tokenizer_path"].endswith("tokenizer.json")
    assert ck.load_state(path)["loop"]["step"] == 7
    assert ck.load_model(path)[1]["step"] == 7  # a checkpoint directory works too


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
        from budgetlm.train import checkpoint as ck
        from budgetlm.models.config import ModelConfig
        from budgetlm.models.transformer import build_model
        real = torch.save
        def dying_save(*a, **k):
            real(*a, **k)
            os.kill(os.getpid(), signal.SIGKILL)  # after model.safetensors and state.pt, before rename
        torch.save = dying_save
        cfg = ModelConfig(**{CFG.__dict__!r})
        ck.save_checkpoint({str(tmp_path)!r}, 2, build_model(cfg), {{"model_config": cfg.__dict__}}, {{"x": 1}})
    """)
    proc = subprocess.run([sys.executable, "-c", script], env=subprocess_env(), capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert any(p.name.startswith(".tmp-step_000002") for p in (tmp_path / "checkpoints").iterdir())
    loaded, meta = ck.load_model(tmp_path)
    assert meta["step"] == 1 and same_weights(m, loaded)


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
    with pytest.raises(BudgetError, match="state.pt"):
        ck.load_state(path)


def test_mismatched_weights_are_refused(tmp_path):
    path = ck.save_checkpoint(tmp_path, 1, model(), META)
    meta = json.loads((path / "meta.json").read_text())
    meta["model_config"]["n_layer"] = 3
    (path / "meta.json").write_text(json.dumps(meta))
    with pytest.raises(BudgetError, match="does not match"):
        ck.load_model(tmp_path)


def test_registered_model_kinds_build():
    # "lm" is ours; other modules (finetune) register kinds with their own meta fields.
    assert isinstance(ck.MODEL_KINDS["lm"]({"model_config": CFG.__dict__}), torch.nn.Module)
    assert all(callable(b) for b in ck.MODEL_KINDS.values())
