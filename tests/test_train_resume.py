"""Real processes: exact resume after SIGKILL, SIGTERM save-and-exit, DDP on gloo vs one process."""

import json
import os
import signal
import socket
import subprocess
import sys
import time

import pytest
import torch
from safetensors.torch import load_file

from budgetlm.cli import main
from train_helpers import TINY, make_dataset, one_thread, subprocess_env  # noqa: F401


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def train_cmd(data, out, *flags):
    return [sys.executable, "-m", "budgetlm", "train", "--data", str(data), "--out", str(out), *TINY, *flags]


def step_losses(run):
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return {x["step"]: x["loss"] for x in lines if "loss" in x}


def test_exact_resume_after_sigkill(data, tmp_path):
    k = 4
    flags = ["--max-steps", str(2 * k), "--checkpoint-every-steps", str(k)]
    straight = tmp_path / "straight"  # in-process (one thread, like the subprocesses): saves a start-up
    assert main(train_cmd(data, straight, *flags)[3:]) == 0

    killed = tmp_path / "killed"
    env = {**subprocess_env(), "BUDGETLM_FAULT_KILL_AFTER_STEP": str(k)}
    proc = subprocess.run(train_cmd(data, killed, *flags), env=env, capture_output=True)
    assert proc.returncode == -signal.SIGKILL
    assert sorted(step_losses(killed)) == list(range(1, k + 1))
    proc = subprocess.run(train_cmd(data, killed, *flags, "--resume"), env=subprocess_env(), capture_output=True)
    assert proc.returncode == 0, proc.stderr.decode()[-500:]

    a, b = step_losses(straight), step_losses(killed)
    assert sorted(a) == sorted(b) == list(range(1, 2 * k + 1))
    assert [a[s] for s in sorted(a)] == [b[s] for s in sorted(b)]  # identical, not just close
    wa = load_file(straight / "checkpoints" / f"step_{2 * k:06d}" / "model.safetensors")
    wb = load_file(killed / "checkpoints" / f"step_{2 * k:06d}" / "model.safetensors")
    assert all(torch.equal(wa[n], wb[n]) for n in wa)


def test_sigterm_saves_and_exits_zero(data, tmp_path):
    run = tmp_path / "run"
    proc = subprocess.Popen(train_cmd(data, run, "--budget", "2m", "--json"), env=subprocess_env(),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    deadline = time.time() + 60
    while time.time() < deadline and not (run / "metrics.jsonl").exists():
        time.sleep(0.1)
    time.sleep(0.5)
    proc.send_signal(signal.SIGTERM)
    out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()[-500:]
    res = json.loads(out)
    assert res["interrupted"] and res["steps"] > 0 and res["elapsed_s"] < 100
    ckpt = run / "checkpoints" / f"step_{res['steps']:06d}"
    assert (ckpt / "model.safetensors").exists() and (ckpt / "state.json").exists()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def torchrun(*args):
    """`budgetlm ARGS` in two gloo processes under torchrun."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--nnodes", "1",
           "--master_addr", "127.0.0.1", "--master_port", str(_free_port()), "-m", "budgetlm", *args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True)


def assert_same_run(single, other):
    """Same step losses and the same final weights as the single-process run (3 steps)."""
    a, b = step_losses(single), step_losses(other)
    assert sorted(a) == sorted(b) == [1, 2, 3]
    for s in a:
        assert a[s] == pytest.approx(b[s], rel=1e-5)
    wa = load_file(single / "checkpoints" / "step_000003" / "model.safetensors")
    wb = load_file(other / "checkpoints" / "step_000003" / "model.safetensors")
    assert wa.keys() == wb.keys()
    for n in wa:
        torch.testing.assert_close(wa[n], wb[n], rtol=1e-4, atol=1e-6)


def test_ddp_gloo_two_processes_match_one(data, tmp_path):
    # adamw, not the default muon: torch's Muon orthogonalises in bf16, so the last-bit difference
    # between an all-reduced mean and a single process's gradient can flip a bf16 rounding and move
    # a weight by ~lr x 2^-8 (seen on an AVX512 Xeon; exact on the earlier machine)
    flags = ["--max-steps", "3", "--batch-size", "4", "--optimizer", "adamw"]
    single = tmp_path / "single"
    assert main(train_cmd(data, single, *flags)[3:]) == 0
    ddp = tmp_path / "ddp"
    proc = torchrun(*train_cmd(data, ddp, *flags)[3:], "--json")
    assert proc.returncode == 0, proc.stderr.decode()[-800:]
    (line,) = proc.stdout.decode().strip().splitlines()  # one JSON answer (rank 0's), not one per rank
    assert json.loads(line)["world_size"] == 2
    assert_same_run(single, ddp)
    summary = json.loads((ddp / "summary.json").read_text())
    assert summary["world_size"] == 2 and summary["tokens"] == 3 * 4 * 32
    assert os.path.isfile(ddp / "report.md")


def test_fsdp_gloo_two_processes_match_one(data, tmp_path):
    """--fsdp under torchrun shards the model across 2 CPU ranks; the losses and the saved (unsharded)
    weights equal one process's with the same global batch, and the run resumes."""
    flags = ["--max-steps", "3", "--batch-size", "4", "--optimizer", "adamw"]
    single = tmp_path / "single"
    assert main(train_cmd(data, single, *flags)[3:]) == 0
    sharded = tmp_path / "fsdp"
    proc = torchrun(*train_cmd(data, sharded, *flags, "--fsdp")[3:], "--json")
    assert proc.returncode == 0, proc.stderr.decode()[-1500:]
    assert json.loads(proc.stdout.decode().strip())["parallel"] == "fsdp"
    assert_same_run(single, sharded)
    # resume the sharded run (its optimizer state was gathered and is scattered back)
    proc = torchrun("train", "--data", str(data), "--out", str(sharded), "--max-steps", "4", "--resume", "--json")
    assert proc.returncode == 0, proc.stderr.decode()[-1500:]
    assert json.loads(proc.stdout.decode().strip())["steps"] == 4


def test_fsdp_refuses_muon(data, tmp_path):
    proc = torchrun(*train_cmd(data, tmp_path / "r", "--max-steps", "1", "--fsdp", "--optimizer", "muon")[3:])
    assert proc.returncode != 0 and b"--fsdp needs --optimizer adamw" in proc.stderr
    assert not (tmp_path / "r").exists()
