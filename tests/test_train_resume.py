"""Real processes: exact resume after SIGKILL, SIGTERM save-and-exit, DDP on gloo vs one process."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from budgetlm.cli import main
from budgetlm.training.job import WEIGHT_DECAY
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


def torchrun(*args, module: bool = True):
    """`budgetlm ARGS` (or the script ARGS[0] when not `module`) in two gloo processes under torchrun.
    `--standalone` lets the rendezvous store bind a free port itself: a port picked here and released
    before torchrun binds it could be taken by another process in between."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           *(["-m", "budgetlm"] if module else []), *args]
    return subprocess.run(cmd, env=subprocess_env(), capture_output=True, timeout=300)


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
    assert json.loads((single / "config.json").read_text())["weight_decay"] == WEIGHT_DECAY  # a given model: the usual decay
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


def test_planned_ddp_run_calibrates_on_rank_0_alone(data, tmp_path):
    """No model given and no calibration yet: rank 0 measures the device while rank 1 waits for the
    plan. The measurement must not build a DDP wrapper, which would wait forever for rank 1."""
    run = tmp_path / "planned"
    proc = torchrun("train", "--data", str(data), "--out", str(run), "--max-steps", "2", "--seq-len", "32",
                    "--precision", "fp32", "--device", "cpu", "--json")
    assert proc.returncode == 0, proc.stderr.decode()[-1500:]
    res = json.loads(proc.stdout.decode().strip())
    assert res["world_size"] == 2 and res["steps"] == 2 and res["planned_tokens_per_s"] > 0
    assert (Path(os.environ["BUDGETLM_HOME"]) / "calibration.json").is_file()


@pytest.mark.parametrize("parallel", [[], ["--fsdp"]], ids=["ddp", "fsdp"])
def test_budgeted_ddp_run_ends_on_every_rank(parallel, data, tmp_path):
    """Under a wall-clock budget the ranks book one clock (the slowest rank's step time): with their own
    clocks one rank stopped a step early and the other waited in a collective forever. Periodic
    evaluations and time-driven checkpoints (a collective gather under FSDP) happen on the same steps."""
    run = tmp_path / "budgeted"
    proc = torchrun(*train_cmd(data, run, "--budget", "4s", "--optimizer", "adamw", "--eval-every", "0.25",
                               "--checkpoint-every", "1s", *parallel)[3:], "--json")
    assert proc.returncode == 0, proc.stderr.decode()[-1500:]
    res = json.loads(proc.stdout.decode().strip())
    assert res["world_size"] == 2 and res["steps"] > 3 and not res["interrupted"]
    assert 3.5 <= res["elapsed_s"] <= 6
    assert step_losses(run) and (run / "checkpoints" / f"step_{res['steps']:06d}").is_dir()


STOP_ON_ONE_RANK = """
import json, os, sys
import torch
from budgetlm import runtime
from budgetlm.training.loop import LoopConfig, LoopHooks, StopFlag, train_loop
from budgetlm.training.schedule import ScheduleConfig

rt = runtime.init_runtime("cpu", "fp32", distributed=True)
setup = runtime.prepare_training(torch.nn.Linear(4, 1), rt, compile="off")
opt = torch.optim.SGD(setup.model.parameters(), lr=0.01)
stop = StopFlag()

def on_step(model, state):  # a signal reaches rank 1 alone, after its third step
    if rt.rank == 1 and state.step == 3:
        stop.set(15)

batch = lambda: {"x": torch.randn(2, 4)}
forward = lambda model, b: model(b["x"]).pow(2).mean()
res = train_loop(setup, batch, opt, rt, LoopConfig(max_steps=50, eval_every=0, checkpoint_every_s=0), ScheduleConfig(),
                 forward=forward, hooks=LoopHooks(on_step=on_step), stop=stop, show_progress=False)
open(os.path.join(sys.argv[1], f"rank{rt.rank}.json"), "w").write(json.dumps([res.state.step, res.interrupted]))
runtime.shutdown(rt)
"""


def on_two_ranks(script_text: str, tmp_path) -> list:
    """Run a script (which writes its rank's JSON answer into the folder argv[1]) on two gloo ranks
    under torchrun; the answers of ranks 0 and 1."""
    script = tmp_path / "script.py"
    script.write_text(script_text)
    proc = torchrun(str(script), str(tmp_path), module=False)
    assert proc.returncode == 0, proc.stderr.decode()[-1500:]
    return [json.loads((tmp_path / f"rank{r}.json").read_text()) for r in (0, 1)]


def test_a_stop_signal_on_one_rank_stops_every_rank_on_the_same_step(tmp_path):
    answers = on_two_ranks(STOP_ON_ONE_RANK, tmp_path)
    assert answers == [[4, True], [4, True]]  # agreed at the end of the step after the signal


RANK_CHOICES = """
import json, os, sys
from budgetlm import runtime
from budgetlm.models.config import ModelConfig
from budgetlm.models.transformer import Transformer

first = os.environ["RANK"] == "0"  # the two ranks' probes disagree, as two loaded CPUs' can
runtime.AUTO_PRECISION["cpu"] = lambda: ("bf16", "rank 0 measured") if first else ("fp32", "rank 1 measured")
runtime.attention_fp32 = lambda rt: first
rt = runtime.init_runtime("cpu", "auto", distributed=True)
model = Transformer(ModelConfig(vocab_size=64, n_layer=1, n_embd=32, n_head=2, max_seq_len=16))
runtime.prepare_training(model, rt, compile="off")
answer = [rt.rank, rt.precision, rt.precision_reason, model.blocks[0].attn.fp32]
open(os.path.join(sys.argv[1], f"rank{rt.rank}.json"), "w").write(json.dumps(answer))
runtime.shutdown(rt)
"""


def test_ranks_take_rank_0s_measured_choices(tmp_path):
    answers = on_two_ranks(RANK_CHOICES, tmp_path)
    assert answers == [[0, "bf16", "rank 0 measured", True], [1, "bf16", "rank 0 measured", True]]


def test_fsdp_refuses_muon(data, tmp_path):
    proc = torchrun(*train_cmd(data, tmp_path / "r", "--max-steps", "1", "--fsdp", "--optimizer", "muon")[3:])
    assert proc.returncode != 0 and b"--fsdp needs --optimizer adamw" in proc.stderr
    assert not (tmp_path / "r").exists()
