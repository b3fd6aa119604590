"""The fault and bad-input suite: every bad value a command can be given is refused with one line
and exit code 2, and no file that existed before (inputs, earlier runs, the user's own files) is
changed by the attempt.

Each row of CASES is (command line, expected exit code, fragment of the one-line message). The
command line may use {data} (a prepared dataset), {run} (a trained causal run), {mlm} (a masked
run), {text} (a UTF-8 text file), {utf16} (a UTF-16 file), {sjis} (Shift-JIS text), {user} (a
folder of the user's own files), damaged copies of {data} and {tmp} (an empty scratch folder). Before each case every file under the fixtures is
hashed, and after it the hashes must be the same. A new flag adds a row.

The slower fault cases (a kill during a write, a full disk) are marked `faults` and run with
    python -m pytest -m faults tests/test_faults.py
The summary line at the end of the run counts cases tried, clean refusals and files changed.
"""

from __future__ import annotations

import errno
import hashlib
import json
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from budgetlm.cli import main
from train_helpers import TINY, make_dataset, one_thread, subprocess_env  # noqa: F401

TALLY = {"tried": 0, "refused": 0, "files_changed": 0}

CASES: list[tuple[str, int, str]] = [
    # train
    ("train --data {data} --out {tmp}/r --max-steps -5", 2, "--max-steps must be"),
    ("train --data {data} --out {tmp}/r --max-tokens -5", 2, "--max-tokens must be"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --lr -0.01", 2, "--lr must be"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --warmup 5", 2, "--warmup must be"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --n-embd 7", 2, "--n-embd must be"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --seed 1e23", 2, "invalid int value"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --seed -1", 2, "--seed must be"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --dropout 1.5", 2, "--dropout must be"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --mask-rate 0", 2, "--mask-rate must be"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --batch-size 1000000000", 2, "--batch-size must be"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --model 2 --batch-size 5000000", 2, "needs about"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --device cuda", 2, "no cuda device"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --device tpu9", 2, "unknown device"),
    ("train --data {data} --out {tmp}/r --max-steps 1 --precision fp64", 2, "unknown precision"),
    ("train --data {data} --out {tmp}/r --budget soon", 2, "malformed duration"),
    ("train --data {data} --out {run} --max-steps 1", 2, "already exists"),
    ("train --data {data} --out {data} --max-steps 1", 2, "is the input"),
    ("train --data {data} --out {data}/inner --max-steps 1", 2, "lies inside the input"),
    ("train --data {data} --out {user} --max-steps 1", 2, "already exists"),
    ("train --data {text} --out {tmp}/r --max-steps 1", 2, "not found"),
    ("train --data {user} --out {tmp}/r --max-steps 1", 2, "not a prepared dataset"),
    ("train --data {data} --out {tmp}/r --init-from {user} --max-steps 1", 2, "holds no checkpoint"),
    ("train --config {text} --out {tmp}/r", 2, "config file"),
    ("train --data {badtypes} --out {tmp}/r --max-steps 1", 2, "is corrupt"),
    ("train --data {badids} --out {tmp}/r --max-steps 1", 2, "beyond the tokenizer"),
    ("train --data {flipped} --out {tmp}/r --max-steps 1", 2, "do not match the manifest's checksum"),
    ("eval --model {run} --data {badids} --split train", 2, "beyond the tokenizer"),
    ("eval --model {run} --data {flipped} --split train", 2, "checksum"),
    # eval
    ("eval --model {run} --data {data} --batch-size -3", 2, "--batch-size must be"),
    ("eval --model {run} --data {data} --batch-size 0", 2, "--batch-size must be"),
    ("eval --model {run} --data {data} --max-tokens -1", 2, "--max-tokens"),
    ("eval --model {run} --data {data} --device cuda", 2, "no cuda device"),
    ("eval --model {run} --text {utf16}", 2, "UTF-8"),
    ("eval --model {user} --data {data}", 2, "holds no checkpoint"),
    ("eval --model {run}", 2, "give --data"),
    # generate
    ("generate --model {run} --max-new-tokens 0", 2, "--max-new-tokens must be"),
    ("generate --model {run} --temperature -1", 2, "--temperature must be"),
    ("generate --model {run} --temperature nan", 2, "--temperature must be"),
    ("generate --model {run} --top-p 0", 2, "--top-p must be"),
    ("generate --model {run} --top-k -1", 2, "--top-k must be"),
    ("generate --model {run} --seed -4", 2, "--seed must be"),
    ("generate --model {run} --device cuda", 2, "no cuda device"),
    ("generate --model {mlm}", 2, "needs a causal model"),
    ("generate --model {run} --prompt {badprompt}", 2, "not valid UTF-8"),
    # plan, hardware
    ("plan --device nvidia-rtx-3090 --budget 1d --vocab-size -5", 2, "--vocab-size"),
    ("plan --device nvidia-rtx-3099 --budget 1d", 2, "unknown device"),
    ("plan --device nvidia-rtx-3090 --budget never", 2, "malformed duration"),
    ("plan --device nvidia-rtx-3090 --budget 1d --seq-len -1", 2, "--seq-len"),
    ("plan --device nvidia-rtx-3090 --budget 1d --num-devices 0", 2, "--num-devices"),
    ("plan --device nvidia-rtx-3090 --budget 1d --data {user}", 2, "not a prepared dataset"),
    ("hardware --catalog-file {text}", 2, "not valid JSON"),
    # serve (refused before the port is bound or the model loaded)
    ("serve", 2, "--model RUN is required"),
    ("serve --model {run} --max-body-bytes -1", 2, "--max-body-bytes must be"),
    ("serve --model {run} --max-tokens-limit 0", 2, "--max-tokens-limit must be"),
    ("serve --model {run} --max-prompt-chars 0", 2, "--max-prompt-chars must be"),
    ("serve --model {run} --max-batch 0", 2, "--max-batch must be"),
    ("serve --model {run} --max-concurrent 0", 2, "--max-concurrent must be"),
    ("serve --model {run} --read-timeout 0", 2, "--read-timeout must be"),
    ("serve --model {run} --graceful-timeout -1", 2, "--graceful-timeout must be"),
    ("serve --model {run} --graceful-timeout nan", 2, "--graceful-timeout must be"),
    ("serve --model {run} --port 70000", 2, "--port must be"),
    ("serve --model {run} --host 192.0.2.1 --api-key k", 2, "not an address of this machine"),
    ("serve --model {run} --quantize int4", 2, "invalid choice"),
    # export
    ("export --model {run}", 2, "give --model RUN"),
    ("export --model {run} --out {run} --overwrite", 2, "is the input"),
    ("export --model {run} --out {run}/hf", 2, "lies inside the input"),
    ("export --model {run} --out {user}", 2, "not empty"),
    ("export --model {run} --out {user} --overwrite", 2, "not a folder budgetlm made"),
    ("export --model {run} --out {text} --overwrite", 2, "is a file"),
    ("export --model {user} --out {tmp}/hf", 2, "holds no checkpoint"),
    ("export --model {run} --out {tmp}/hf --dtype float64", 2, "invalid choice"),
    # prepare
    ("prepare {text} --out {tmp}/p --vocab-size 1000000000", 2, "--vocab-size must be"),
    ("prepare {text} --out {tmp}/p --val-fraction 1.5", 2, "--val-fraction must be"),
    ("prepare {text} --out {tmp}/p --max-mb -1", 2, "--max-mb must be"),
    ("prepare {text} --out {tmp}/p --batch-chars 0", 2, "--batch-chars must be"),
    ("prepare {text} --out {tmp}/p --min-compression nan", 2, "--min-compression must be"),
    ("prepare {text} --out {tmp}/p --tokenizer-from {user}", 2, "tokenizer"),
    ("prepare {user} --out {user}/inner", 2, "lies inside the input"),
    ("prepare {text} --out {user} --overwrite", 2, "not a folder budgetlm made"),
    ("prepare {text} --out {run} --overwrite", 2, "budgetlm train folder"),
    ("prepare {text} --out {data}", 2, "already exists"),
    ("prepare {utf16} --out {tmp}/p", 2, "is UTF-16 text"),
    ("prepare {text} {utf16} --out {tmp}/p", 2, "is UTF-16 text"),
    ("prepare {sjis} --out {tmp}/p", 2, "is not UTF-8 text"),
    ("prepare {text} --out {tmp}/p --vocab-size 100", 2, "too small for a bpe tokenizer"),
    ("prepare {text} --out {tmp}/p --vocab-size -1", 2, "--vocab-size must be"),
    ("prepare {text} --out {tmp}/p --tokenizer-train-mb -1", 2, "--tokenizer-train-mb must be"),
    ("prepare {text} --out {tmp}/p --min-chars -1", 2, "--min-chars must be"),
    ("prepare {text} --out {tmp}/p --max-compression inf", 2, "--max-compression must be"),
    ("prepare {text} --out {tmp}/p --block-chars 10", 2, "--block-chars must be"),
    ("prepare {text} --out {tmp}/p --shard-tokens 0", 2, "--shard-tokens must be"),
    ("prepare {text} --out {tmp}/p --tokenizer sentencepiece", 2, "invalid choice"),
    ("prepare {text} --out {tmp}/p --tokenizer-from {text}", 2, "cannot read tokenizer"),
    ("prepare {text} --out {tmp}/p --builtin nosuch", 2, "unknown built-in corpus"),
    ("prepare --out {tmp}/p", 2, "nothing to prepare"),
    ("prepare {tmp}/missing.txt --out {tmp}/p", 2, "input not found"),
    ("prepare {text} --val {tmp}/missing.txt --out {tmp}/p", 2, "input not found"),
    ("prepare {text} --out {text}", 2, "is the input"),
    ("prepare {text} --out {labels}", 2, "is a file"),
    ("prepare {text} --out {data} --overwrite --tokenizer-from {data}", 2, "is the input"),
    ("prepare --hf-dataset {hfds} --split test --out {tmp}/p", 2, "no split 'test'"),
    ("prepare --hf-dataset {hfds} --text-field body --out {tmp}/p", 2, "no field 'body'"),
    # damaged datasets, for every reader of one
    ("plan --device nvidia-rtx-3090 --budget 1d --data {badtypes}", 2, "is corrupt"),
    ("plan --device nvidia-rtx-3090 --budget 1d --data {badsplit}", 2, "is corrupt"),
    ("train --data {badpath} --out {tmp}/r --max-steps 1", 2, "inside the dataset folder"),
    ("eval --model {run} --data {noshard} --split train", 2, "cannot read token shard"),
    ("eval --model {run} --data {badtypes}", 2, "is corrupt"),
    # labelled files in another encoding
    ("finetune --model {mlm} --train {sjistsv} --out {tmp}/f", 2, "is not UTF-8 text"),
    ("classify --model {clf} --input {sjis}", 2, "is not UTF-8 text"),
    ("prepare {text} --out {tmp}/p --clean nosuchstep", 2, "nosuchstep"),
    # finetune
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --batch-size 0", 2, "--batch-size must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --lr -1", 2, "--lr must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --lr nan", 2, "--lr must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --epochs -1", 2, "--epochs must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --max-len 3", 2, "--max-len must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --dropout 1.5", 2, "--dropout must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --ema 1", 2, "--ema must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --patience -1", 2, "--patience must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --seed -2", 2, "--seed must be"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --budget soon", 2, "malformed duration"),
    ("finetune --model {mlm} --train {labels} --out {tmp}/f --track neptune", 2, "unknown tracker"),
    ("finetune --model {mlm} --train {labels16} --out {tmp}/f", 2, "is UTF-16 text"),
    ("finetune --model {mlm} --train {labels} --out {clf}", 2, "already exists"),
    ("finetune --model {mlm} --train {labels} --out {user} --overwrite", 2, "not a folder budgetlm made"),
    ("finetune --model {mlm} --train {labels} --out {run} --overwrite", 2, "budgetlm train folder"),
    ("finetune --model {clf} --train {labels} --out {clf} --overwrite", 2, "is the input"),
    ("finetune --model {mlm} --train {labels} --out {mlm}/inner", 2, "lies inside the input"),
    ("finetune --model {clf} --train {labels} --out {tmp}/f", 2, "already a fine-tuned classifier"),
    ("finetune --model {mlm} --train {text} --out {tmp}/f", 2, "unknown format"),
    # classify
    ("classify --model {clf} --text hi --batch-size 0", 2, "--batch-size must be"),
    ("classify --model {clf} --input {labels} --output {labels}", 2, "would write over the input"),
    ("classify --model {clf} --text hi --output {text}", 2, "already exists"),
    ("classify --model {clf} --text hi --output {user}", 2, "is a folder"),
    ("classify --model {run} --text hi", 2, "not a fine-tuned classifier"),
    ("classify --model {clf} --input {labels16}", 2, "is UTF-16 text"),
    ("classify --model {clf} --input {utf16}", 2, "is UTF-16 text"),
    ("eval --model {clf} --text {labels} --batch-size 0", 2, "--batch-size must be"),
    ("eval --model {clf} --text {labels16}", 2, "is UTF-16 text"),
    # bench
    ("bench --seconds 0", 2, "--seconds must be > 0"),
    ("bench --depths 0", 2, "--depths must be positive"),
    ("bench --precisions fp64", 2, "unknown precision"),
    # demo
    ("demo --budget soon --out {tmp}/d", 2, "malformed duration"),
    ("demo --max-new-tokens 0 --out {tmp}/d", 2, "--max-new-tokens must be"),
]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("faults")
    data = make_dataset(root)
    for name, objective in (("run", "causal"), ("mlm", "masked")):
        assert main(["train", "--data", str(data), "--out", str(root / name), "--max-steps", "2",
                     "--objective", objective, *TINY]) == 0
    (root / "text.txt").write_text("the king and the queen\n", encoding="utf-8")
    rows = ["text\tlabel"] + [f"the {w} king speaks\t{lab}" for w, lab in
                              [("good", "pos"), ("bad", "neg")] * 20]
    (root / "labels.tsv").write_text("\n".join(rows) + "\n", encoding="utf-8")
    (root / "labels16.tsv").write_bytes(("\n".join(rows) + "\n").encode("utf-16"))
    assert main(["finetune", "--model", str(root / "mlm"), "--train", str(root / "labels.tsv"), "--out",
                 str(root / "clf"), "--epochs", "1", "--batch-size", "8", "--max-len", "16", "--device", "cpu",
                 "--precision", "fp32"]) == 0
    (root / "utf16.txt").write_bytes("the king and the queen\n".encode("utf-16"))
    japanese = "これは日本語の文章です。名前と住所を書いてください。"
    (root / "sjis.txt").write_bytes((japanese + "\n").encode("shift_jis") * 10)
    (root / "sjis.tsv").write_bytes(("text\tlabel\n" + f"{japanese}\tpos\n" * 10).encode("shift_jis"))
    import datasets

    datasets.DatasetDict({"train": datasets.Dataset.from_dict({"text": ["the king speaks"] * 4})}).save_to_disk(
        str(root / "hfds"))
    user = root / "user"
    user.mkdir()
    (user / "notes.txt").write_text("my own file")
    _damaged_datasets(root, data)
    return {"data": data, "run": root / "run", "mlm": root / "mlm", "text": root / "text.txt",
            "utf16": root / "utf16.txt", "user": user, "root": root, "labels": root / "labels.tsv",
            "labels16": root / "labels16.tsv", "clf": root / "clf", "badtypes": root / "badtypes",
            "badids": root / "badids", "flipped": root / "flipped", "badprompt": "\udcff",
            "badsplit": root / "badsplit", "badpath": root / "badpath", "noshard": root / "noshard",
            "sjis": root / "sjis.txt", "sjistsv": root / "sjis.tsv", "hfds": root / "hfds"}


def _damaged_datasets(root: Path, data: Path) -> None:
    """Copies of the dataset: a manifest with a wrong type, token ids beyond the vocabulary (with the
    checksums dropped, as a dataset from before checksums would be), and one flipped shard byte."""
    for name in ("badtypes", "badids", "flipped"):
        shutil.copytree(data, root / name)
    m = json.loads((root / "badtypes" / "manifest.json").read_text())
    m["splits"]["train"]["shards"][0]["tokens"] = "many"
    (root / "badtypes" / "manifest.json").write_text(json.dumps(m))
    m = json.loads((root / "badids" / "manifest.json").read_text())
    for split in m["splits"].values():
        for sh in split["shards"]:
            sh.pop("sha256", None)
    (root / "badids" / "manifest.json").write_text(json.dumps(m))
    shard = root / "badids" / m["splits"]["train"]["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[-2:] = (60000).to_bytes(2, "little")  # a uint16 id far beyond the byte tokenizer's 262
    shard.write_bytes(bytes(raw))
    shard = root / "flipped" / m["splits"]["train"]["shards"][0]["file"]
    raw = bytearray(shard.read_bytes())
    raw[100] ^= 0x01
    shard.write_bytes(bytes(raw))
    _edited_copy(root, data, "badsplit", lambda m: m["splits"]["train"].update(tokens="many"))
    _edited_copy(root, data, "badpath", lambda m: m["splits"]["train"]["shards"][0].update(file="../text.txt"))
    _edited_copy(root, data, "noshard", lambda m: m)
    (root / "noshard" / m["splits"]["train"]["shards"][0]["file"]).unlink()


def _edited_copy(root: Path, data: Path, name: str, edit) -> None:
    shutil.copytree(data, root / name)
    m = json.loads((root / name / "manifest.json").read_text())
    edit(m)
    (root / name / "manifest.json").write_text(json.dumps(m))


def snapshot(root: Path) -> dict[str, str]:
    return {str(p.relative_to(root)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*")) if p.is_file() and not p.name.endswith(".lock")}


def run_cli(argv: list[str], capsys) -> tuple[int, str]:
    try:
        code = main(argv)
    except SystemExit as e:  # argparse's own refusals
        code = e.code
    return code, capsys.readouterr().err


@pytest.mark.parametrize("line, code, fragment", CASES, ids=[c[0][:60] for c in CASES])
def test_bad_input_is_refused_and_changes_nothing(world, tmp_path, capsys, line, code, fragment):
    fields = {k: str(v) for k, v in world.items()} | {"tmp": str(tmp_path)}
    argv = [a.format(**fields) for a in shlex.split(line)]
    before = snapshot(world["root"])
    got, err = run_cli(argv, capsys)
    after = snapshot(world["root"])
    changed = sum(before.get(k) != v for k, v in after.items()) + len(set(before) - set(after))
    TALLY["tried"] += 1
    TALLY["files_changed"] += changed
    lines = [x for x in err.strip().splitlines() if x.strip()]
    clean = got == code and len(lines) >= 1 and "Traceback" not in err and "internal error" not in err
    TALLY["refused"] += int(clean)
    assert got == code, err
    assert fragment in lines[-1], err
    assert "Traceback" not in err and "internal error" not in err
    assert changed == 0, sorted(k for k in after if before.get(k) != after[k])


def test_a_full_disk_while_checkpointing_is_a_clear_error(world, tmp_path, capsys, monkeypatch):
    from budgetlm.training import statefile

    def full(*a, **k):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(statefile, "save_state", full)
    code, err = run_cli(["train", "--data", str(world["data"]), "--out", str(tmp_path / "r"), "--max-steps", "2",
                         *TINY], capsys)
    assert code == 2 and "no space left on the device" in err and "needs about" in err
    assert not (tmp_path / "r").exists() or not list((tmp_path / "r").glob("checkpoints/.tmp*"))


@pytest.mark.faults
def test_kill_during_checkpoint_writes_always_leaves_a_loadable_run(world, tmp_path):
    """SIGKILL right after the checkpoint of step N: --resume continues to the same final step."""
    run = tmp_path / "r"
    base = [sys.executable, "-m", "budgetlm", "train", "--data", str(world["data"]), "--out", str(run),
            "--checkpoint-every-steps", "2", *TINY]
    env = subprocess_env() | {"BUDGETLM_FAULT_KILL_AFTER_STEP": "4"}
    proc = subprocess.run([*base, "--max-steps", "8"], env=env, capture_output=True)
    assert proc.returncode == -9
    proc = subprocess.run([*base[:8], "--max-steps", "8", "--resume", "--json"], env=subprocess_env(),
                          capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr[-500:]
    assert json.loads(proc.stdout)["steps"] == 8


@pytest.mark.faults
def test_a_real_full_disk(world, tmp_path, capsys):
    """A 2 MB tmpfs (needs root): the run stops with the no-space message, nothing half-written stays."""
    mnt = tmp_path / "small"
    mnt.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mnt)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here")
    try:
        code, err = run_cli(["train", "--data", str(world["data"]), "--out", str(mnt / "r"), "--max-steps", "2",
                             *TINY, "--n-embd", "256"], capsys)  # ~4 MB of weights for a 2 MB disk
        assert code == 2 and "no space left" in err, err
        assert not list(mnt.rglob(".tmp-*"))
    finally:
        subprocess.run(["umount", str(mnt)])
        shutil.rmtree(mnt, ignore_errors=True)


def pytest_terminal_summary_line() -> str:
    return (f"fault suite: {TALLY['tried']} bad inputs tried, {TALLY['refused']} clean refusals, "
            f"{TALLY['files_changed']} files changed")
