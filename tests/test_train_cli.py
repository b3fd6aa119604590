"""`budgetlm train` end to end on a tiny dataset, in-process: outputs, resume, bad input."""

import json
from types import SimpleNamespace

import pytest
import torch

from budgetlm.cli import main
from budgetlm.training.job import AUTO_INPUT_NOISE, COOLDOWN, REPEAT_COOLDOWN, ema_decay, ema_for_steps
from train_helpers import TINY, make_dataset, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def train(capsys, *flags):
    rc = main(["train", *flags, "--json"])
    cap = capsys.readouterr()
    return rc, (json.loads(cap.out) if rc == 0 else None), cap.err


def test_train_writes_a_complete_run(data, tmp_path, capsys):
    run = tmp_path / "run"
    rc, res, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "6", *TINY)
    assert rc == 0, err
    for key in ("run_dir", "steps", "tokens", "elapsed_s", "val_loss", "val_bpb", "tokens_per_s", "mfu"):
        assert key in res
    assert res["steps"] == 6 and res["tokens"] == 6 * 4 * 32
    assert 0 < res["val_bpb"] < 10
    for f in ("config.json", "metrics.jsonl", "report.md", "loss.png", "summary.json"):
        assert (run / f).is_file(), f
    lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [x["step"] for x in lines if "loss" in x] == [1, 2, 3, 4, 5, 6]
    assert lines[-1]["final"] and "val_bpb" in lines[-1]
    assert "![loss curve](loss.png)" in (run / "report.md").read_text()
    assert json.loads((run / "config.json").read_text())["cooldown"] == COOLDOWN  # a given model: the usual cool-down


def test_resume_continues_with_budget_accounting(data, tmp_path, capsys):
    run = tmp_path / "run"
    rc, first, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "3", *TINY)
    assert rc == 0, err
    rc, second, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "5", "--resume")
    assert rc == 0, err
    assert second["steps"] == 5 and second["tokens"] == 5 * 4 * 32
    assert second["elapsed_s"] >= first["elapsed_s"]


def test_masked_objective(data, tmp_path, capsys):
    rc, res, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "m"), "--objective", "masked",
                         "--max-steps", "3", *TINY)
    assert rc == 0, err
    assert res["objective"] == "masked" and 0.0 <= res["val_accuracy"] <= 1.0 and "val_bpb" not in res


def test_existing_run_is_not_overwritten(data, tmp_path, capsys):
    run = tmp_path / "run"
    run.mkdir()
    (run / "precious.txt").write_text("keep me")
    rc, _, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "2", *TINY)
    assert rc == 2 and "--resume" in err and len(err.strip().splitlines()) == 1  # one line, nothing else
    assert (run / "precious.txt").read_text() == "keep me"


def test_missing_data_folder(tmp_path, capsys):
    rc, _, err = train(capsys, "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "r"), "--max-steps", "2")
    assert rc == 2 and "not found" in err and not (tmp_path / "r").exists()


def test_not_a_dataset(tmp_path, capsys):
    (tmp_path / "d").mkdir()
    rc, _, err = train(capsys, "--data", str(tmp_path / "d"), "--out", str(tmp_path / "r"), "--max-steps", "2")
    assert rc == 2 and "prepare" in err


def test_no_budget(data, tmp_path, capsys):
    rc, _, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "r"))
    assert rc == 2 and "budget" in err


def test_budget_too_small_writes_nothing(data, tmp_path, capsys):
    run = tmp_path / "r"
    rc, _, err = train(capsys, "--data", str(data), "--out", str(run), "--budget", "0.0001s", *TINY)
    errors = [x for x in err.splitlines() if x.startswith("budgetlm: error")]
    assert rc == 2 and len(errors) == 1 and "too small" in errors[0]
    assert not run.exists()


def test_resume_with_a_different_tokenizer_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "2", *TINY)[0] == 0
    before = sorted(p.name for p in (run / "checkpoints").iterdir())
    other = make_dataset(tmp_path, "bpe", tokenizer="bpe", vocab_size=300)
    rc, _, err = train(capsys, "--data", str(other), "--out", str(run), "--max-steps", "4", "--resume")
    assert rc == 2 and "tokenizer" in err
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == before


def test_resume_from_a_corrupt_checkpoint_is_refused(data, tmp_path, capsys):
    run = tmp_path / "run"
    assert train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "2", *TINY)[0] == 0
    ckpt = run / "checkpoints" / "step_000002"
    (ckpt / "state.json").write_bytes(b"broken")
    rc, _, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "4", "--resume")
    assert rc == 2 and "corrupt" in err
    assert (ckpt / "state.json").read_bytes() == b"broken"


def test_unknown_preset(data, tmp_path, capsys):
    rc, _, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "r"), "--max-steps", "2",
                       "--model", "gigantic")
    assert rc == 2 and "unknown model size" in err


def test_activation_checkpointing_trains_the_same_losses(data, tmp_path, capsys):
    """--activation-checkpointing recomputes blocks in backward: same fp32 losses as without it."""
    losses = []
    for flag, name in (("--no-activation-checkpointing", "plain"), ("--activation-checkpointing", "ckpt")):
        run = tmp_path / name
        rc, res, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "3",
                             flag, *TINY)
        assert rc == 0, err
        lines = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
        losses.append([x["loss"] for x in lines if "loss" in x])
    assert len(losses[0]) == 3
    assert losses[0] == pytest.approx(losses[1], rel=1e-5)


def test_auto_model_trains_the_plan(data, tmp_path, capsys, budgetlm_home):
    """No --model: calibrate (cached), plan for the budget and the data, print the plan, train it."""
    run = tmp_path / "auto"
    rc, res, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "2", "--seq-len", "32",
                         "--precision", "fp32", "--device", "cpu", "--eval-tokens", "256")
    assert rc == 0, err
    assert "plan on" in err and "planned: " in err and " wide is the compute-optimal size" in err  # the plan is shown before training
    cal = json.loads((budgetlm_home / "calibration.json").read_text())
    (entry,) = cal["devices"].values()
    assert {p["seq_len"] for p in entry["precisions"]["fp32"]} == {32}
    cfg = json.loads((run / "config.json").read_text())
    meta = json.loads(sorted((run / "checkpoints").glob("step_*"))[-1].joinpath("meta.json").read_text())
    from budgetlm import runtime
    from budgetlm.data.shards import open_tokens
    from budgetlm.training.calibrate import auto_plan
    from budgetlm.training.job import PLAN_BUDGET_WITHOUT_CLOCK_S, REPEAT_WEIGHT_DECAY, WEIGHT_DECAY

    rt = runtime.Runtime(runtime.torch.device("cpu"), "cpu", "fp32", "test")
    # the data repeats 20+ times, so the run was planned from steps measured with dropout 0.2
    assert {p.get("dropout", 0.0) for p in entry["precisions"]["fp32"]} == {0.0, 0.2}
    plan = auto_plan(PLAN_BUDGET_WITHOUT_CLOCK_S, len(open_tokens(data, "train")), 32, rt, "causal",
                     meta["vocab_size"], "muon", dropout=0.2)
    # planning again reuses the cached calibration (nothing re-measured) and gives the trained plan
    assert json.loads((budgetlm_home / "calibration.json").read_text()) == cal
    assert meta["model_config"]["n_layer"] == plan.model.n_layer
    assert meta["model_config"]["n_embd"] == plan.model.n_embd
    # config.json holds the resolved job: the planned shape, the precision and compile setting used
    assert (cfg["model"], cfg["n_embd"]) == (str(plan.model.n_layer), plan.model.n_embd)
    assert (cfg["precision"], cfg["compile"], cfg["device"]) == ("fp32", "off", "cpu")
    assert json.loads((run / "plan.json").read_text())["model"]["n_embd"] == plan.model.n_embd
    assert cfg["batch_size"] * 32 == plan.global_batch_tokens and cfg["micro_batch"] == plan.micro_batch
    assert plan.epochs >= 10 and cfg["dropout"] == 0.2  # many planned epochs: automatic dropout
    assert "; dropout 0.2 (" in err
    # dropout regularises: the usual weight decay; the weight average over the cool-down still pays
    planned = json.loads((run / "plan.json").read_text())
    want = ema_decay(SimpleNamespace(**planned), cfg["cooldown"])
    assert (cfg["weight_decay"], cfg["ema"]) == (WEIGHT_DECAY, want) and 0.9 < want < 1
    assert f"weight average {want:g} over the cool-down" in err
    assert cfg["cooldown"] == REPEAT_COOLDOWN and f"; cool-down {REPEAT_COOLDOWN:g} (" in err  # the longer cool-down
    assert cfg["input_noise"] == AUTO_INPUT_NOISE > 0 and f"; input noise {AUTO_INPUT_NOISE:g}" in err
    # an explicit --dropout 0 wins over the automatic rate (0 is not "not given"); repeated data without
    # dropout gets the larger weight decay and the weight average, and explicit flags win over those
    for name, flags, wd, ema, cool in [("nodrop", [], REPEAT_WEIGHT_DECAY, True, REPEAT_COOLDOWN),
                                       ("nowd", ["--weight-decay", "0"], 0.0, True, REPEAT_COOLDOWN),
                                       ("noema", ["--ema", "0"], REPEAT_WEIGHT_DECAY, False, REPEAT_COOLDOWN),
                                       ("cool", ["--cooldown", "0.3", "--input-noise", "0"], REPEAT_WEIGHT_DECAY, True, 0.3)]:
        rc, _, err = train(capsys, "--data", str(data), "--out", str(tmp_path / name), "--max-steps", "1",
                           "--seq-len", "32", "--precision", "fp32", "--device", "cpu", "--eval-tokens", "256",
                           "--dropout", "0", *flags)
        assert rc == 0, err
        got = json.loads((tmp_path / name / "config.json").read_text())
        assert (got["dropout"], got["weight_decay"], got["cooldown"]) == (0.0, wd, cool)
        assert got["input_noise"] == (0.0 if "--input-noise" in flags else AUTO_INPUT_NOISE)  # a flag wins
        planned = json.loads((tmp_path / name / "plan.json").read_text())
        want = ema_decay(SimpleNamespace(**planned), got["cooldown"]) if ema else 0.0
        assert got["ema"] == want and (0.9 < want < 1 or not ema)
        assert "dropout 0.2" not in err  # the reason names only what the run uses
        assert (f"weight average {want:g} over the cool-down" in err) == ema


def test_the_automatic_weight_average_takes_its_decay_from_the_runs_own_pace(data, tmp_path, capsys, budgetlm_home):
    """The plan's step count comes from a predicted speed; when the cool-down starts the run knows its
    own pace and sets the automatic decay from the steps it has left. An explicit --ema is kept."""
    common = ["--data", str(data), "--max-steps", "40", "--seq-len", "32", "--precision", "fp32", "--device", "cpu",
              "--eval-tokens", "256", "--dropout", "0"]
    rc, _, err = train(capsys, "--out", str(tmp_path / "auto"), *common)
    assert rc == 0, err
    planned = json.loads((tmp_path / "auto" / "config.json").read_text())
    assert planned["cooldown"] == REPEAT_COOLDOWN and 0.99 < planned["ema"] < 1  # planned for a 10-minute clock
    # progress 16 / 40 = 1 - 0.6 starts the cool-down: 16 steps took 0.4 of the run, so 24 are left
    assert f"weight average from step 16: decay {ema_for_steps(24):g} " in err and ema_for_steps(24) == 0.79167
    summary = lambda name: json.loads((tmp_path / name / "summary.json").read_text())  # noqa: E731
    assert summary("auto")["ema"] == 0.79167  # the decay the run ended with, not the planned one
    assert "| weight average over the cool-down (decay per step; the final weights) | 0.79167 |" in \
        (tmp_path / "auto" / "report.md").read_text()
    rc, _, err = train(capsys, "--out", str(tmp_path / "given"), *common, "--ema", "0.9")
    assert rc == 0, err
    assert "weight average from step" not in err and json.loads((tmp_path / "given" / "config.json").read_text())["ema"] == 0.9
    assert summary("given")["ema"] == 0.9


def test_the_automatic_weight_average_spans_a_fifth_of_the_cool_down():
    plan = lambda tokens: SimpleNamespace(tokens=tokens, global_batch_tokens=1000)  # noqa: E731
    assert ema_decay(plan(2_500_000), 0.4) == pytest.approx(0.995)  # 1,000 cool-down steps
    assert ema_decay(plan(800_000), 0.4) == pytest.approx(1 - 5 / 320, abs=1e-5)
    assert ema_decay(plan(10**12), 0.4) == 0.99999  # never 1: the average would stop moving
    assert ema_decay(plan(10_000), 0.4) == 0.0  # a cool-down of 4 steps has nothing to average
    assert ema_decay(plan(10**9), 0.0) == 0.0


def test_input_noise_is_for_the_causal_objective(data, tmp_path, capsys):
    rc, _, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "r"), "--max-steps", "1",
                       "--objective", "masked", "--input-noise", "0.1")
    assert rc == 2 and "--input-noise is for the causal objective" in err and "Traceback" not in err
    assert not (tmp_path / "r").exists()


def test_dropout_out_of_range_is_one_line_error(data, tmp_path, capsys):
    rc, _, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "r"), "--max-steps", "1",
                       "--dropout", "1.5")
    assert rc == 2 and "--dropout must be [0, 0.95] or -1" in err and "Traceback" not in err


def test_final_evaluation_runs_without_dropout(data, tmp_path, capsys):
    """The summary's val loss is the saved model's loss in eval mode (dropout off), as `eval` says."""
    run = tmp_path / "drop"
    rc, res, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "4", "--dropout", "0.5",
                         *TINY)
    assert rc == 0, err
    assert main(["eval", "--model", str(run), "--data", str(data), "--precision", "fp32", "--device", "cpu",
                 "--json"]) == 0
    ev = json.loads(capsys.readouterr().out)
    assert res["val_loss"] == pytest.approx(ev["loss"], rel=1e-6)


def _weights(run):
    from safetensors.torch import load_file

    return load_file(str(sorted((run / "checkpoints").iterdir())[-1] / "model.safetensors"))


def test_init_from_starts_a_new_run_from_another_runs_weights(data, tmp_path, capsys):
    base = tmp_path / "base"
    assert train(capsys, "--data", str(data), "--out", str(base), "--max-steps", "6", *TINY)[0] == 0
    cont = tmp_path / "cont"
    # --model is ignored (the shape comes from the source run); a vanishing LR leaves the weights as loaded
    rc, res, err = train(capsys, "--data", str(data), "--out", str(cont), "--init-from", str(base),
                         "--model", "4", "--max-steps", "2", "--lr", "1e-12")
    assert rc == 0, err
    assert res["steps"] == 2 and res["params"] == json.loads((base / "summary.json").read_text())["params"]
    a, b = _weights(base), _weights(cont)
    assert a.keys() == b.keys()
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    fresh = tmp_path / "fresh"  # the same two steps without --init-from start from other weights
    assert train(capsys, "--data", str(data), "--out", str(fresh), "--max-steps", "2", "--lr", "1e-12", *TINY)[0] == 0
    assert not all(torch.allclose(a[k], v, atol=1e-6) for k, v in _weights(fresh).items())


@pytest.mark.parametrize("case", ["objective", "tokenizer", "resume", "missing"])
def test_init_from_refuses_a_source_that_does_not_fit(case, data, tmp_path, capsys):
    base = tmp_path / "base"
    assert train(capsys, "--data", str(data), "--out", str(base), "--max-steps", "2", *TINY)[0] == 0
    flags = {"objective": ["--data", str(data), "--objective", "masked"],
             "tokenizer": ["--data", str(make_dataset(tmp_path, "bpe", tokenizer="bpe", vocab_size=300))],
             "resume": ["--data", str(data), "--resume"],
             "missing": ["--data", str(data)]}[case]
    source = tmp_path / "nope" if case == "missing" else base
    out = base if case == "resume" else tmp_path / "cont"
    rc, _, err = train(capsys, *flags, "--out", str(out), "--init-from", str(source), "--max-steps", "2")
    errors = [x for x in err.splitlines() if x.startswith("budgetlm: error")]
    assert rc == 2 and len(errors) == 1, err
    assert {"objective": "--objective causal", "tokenizer": "tokenizer", "resume": "--resume", "missing": "no model"}[case] in errors[0]
    assert not (tmp_path / "cont").exists()


def test_out_inside_the_data_or_a_file_is_refused(data, tmp_path, capsys):
    before = sorted(p.name for p in data.iterdir())
    rc, _, err = train(capsys, "--data", str(data), "--out", str(data / "run"), "--max-steps", "1", *TINY)
    assert rc == 2 and "lies inside the input" in err
    assert sorted(p.name for p in data.iterdir()) == before
    (tmp_path / "afile").write_text("keep")
    rc, _, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "afile"), "--max-steps", "1", *TINY)
    assert rc == 2 and "is a file" in err and (tmp_path / "afile").read_text() == "keep"


def test_a_failed_run_leaves_nothing_and_a_run_killed_before_its_first_checkpoint_starts_again(data, tmp_path, capsys):
    run = tmp_path / "run"
    rc, _, err = train(capsys, "--data", str(data), "--out", str(run), "--budget", "0.0001", *TINY)
    assert rc == 2 and "too small" in err
    assert not run.exists() or not any(p.name != ".budgetlm.lock" for p in run.iterdir())
    # what a SIGKILL before the first checkpoint leaves: the marker and a metrics file
    run.mkdir(exist_ok=True)
    from budgetlm import fsio

    fsio.write_marker(run, "train")
    (run / "metrics.jsonl").write_text('{"step": 1}\n')
    rc, res, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "2", "--resume", *TINY)
    assert rc == 0, err
    assert "starting it again" in err and res["steps"] == 2


def test_two_trainings_into_one_folder_at_once(data, tmp_path, capsys):
    from budgetlm import fsio

    run = tmp_path / "run"
    with fsio.FolderLock(run):
        rc, _, err = train(capsys, "--data", str(data), "--out", str(run), "--max-steps", "1", *TINY)
    assert rc == 2 and "is being written by" in err


@pytest.mark.parametrize("flags, needle", [
    (["--max-steps", "-5"], "--max-steps must be [0, 1e+12]"),
    (["--max-tokens", "-5"], "--max-tokens must be"),
    (["--lr", "-0.01"], "--lr must be"),
    (["--warmup", "5"], "--warmup must be [0, 0.99]"),
    (["--n-embd", "7"], "--n-embd must be [32, 65536] or 0"),
    (["--n-embd", "48"], "multiple of 32"),
    (["--seed", "-1"], "--seed must be"),
    (["--lr", "nan"], "--lr must be"),
    (["--batch-size", "10000000"], "needs about"),
])
def test_bad_numbers_are_refused_before_any_work(data, tmp_path, capsys, flags, needle):
    rc, _, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "r"), "--max-steps", "1",
                       *[f for f in TINY if f not in ("--batch-size", "4")], *flags)
    assert rc == 2 and needle in err and "internal error" not in err, err
    assert not (tmp_path / "r").exists()


def test_progress_lines_in_a_log(data, tmp_path, capsys):
    """Output to a file (not a terminal): plain progress lines while training, not silence."""
    rc, res, err = train(capsys, "--data", str(data), "--out", str(tmp_path / "r"), "--budget", "3s",
                         "--progress-every", "0.5", *TINY)
    assert rc == 0, err
    lines = [ln for ln in err.splitlines() if ln.startswith("train (3.0s): ")]
    assert len(lines) >= 3, err
    assert all("loss" in ln and "tok/s" in ln and "of the budget left" in ln and "elapsed" in ln for ln in lines[:-1])


def test_ema_ends_the_run_with_the_average_of_the_cooldowns_weights(data, tmp_path, capsys):
    """--ema: training itself is unchanged; from the cool-down's start (progress >= 1 - cooldown) the
    weights are averaged (the first update copies them), and the run ends with the average: the final
    evaluation and the final checkpoint are of it."""
    from budgetlm.training.checkpoint import load_model

    common = ["--data", str(data), "--max-steps", "8", "--cooldown", "0.5", "--checkpoint-every-steps", "1",
              "--keep-last", "10", *TINY]
    rc, raw, err = train(capsys, "--out", str(tmp_path / "raw"), *common)
    assert rc == 0, err
    rc, avg, err = train(capsys, "--out", str(tmp_path / "ema"), *common, "--ema", "0.5")
    assert rc == 0, err
    losses = [[json.loads(x).get("loss") for x in (tmp_path / r / "metrics.jsonl").read_text().splitlines()]
              for r in ("raw", "ema")]
    assert losses[0] == losses[1]  # the same training
    states = {s: load_model(tmp_path / "raw" / "checkpoints" / f"step_{s:06d}")[0].state_dict() for s in range(4, 9)}
    want = {k: v.clone() for k, v in states[4].items()}  # steps 4..8 are the last half of 8
    for s in range(5, 9):
        want = {k: 0.5 * want[k] + 0.5 * states[s][k] for k in want}
    got, _ = load_model(tmp_path / "ema")
    for k, v in got.state_dict().items():
        assert torch.allclose(v, want[k], atol=1e-6), k
    rc = main(["eval", "--model", str(tmp_path / "ema"), "--data", str(data), "--json"])
    ev = json.loads(capsys.readouterr().out)
    assert rc == 0 and ev["loss"] == pytest.approx(avg["val_loss"], rel=1e-6) and avg["val_loss"] != raw["val_loss"]
