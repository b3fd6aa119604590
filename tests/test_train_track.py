"""Experiment tracking: TensorBoard event files, W&B offline and MLflow's file store each receive a
short run's metrics under grouped names, and its resolved config."""

import json

import pytest

from budgetlm.cli import main
from budgetlm.training.track import MetricsLogger, tagged
from train_helpers import TINY, make_dataset, one_thread  # noqa: F401


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    return make_dataset(tmp_path_factory.mktemp("data"))


def test_metric_names_are_grouped():
    assert tagged({"step": 3, "loss": 2.0, "lr": 1e-3, "tokens_per_s": 10, "mfu": 0.5, "val_bpb": 1.5}) == {
        "train/loss": 2.0, "lr": 1e-3, "perf/tokens_per_s": 10.0, "perf/mfu": 0.5, "val/bits_per_byte": 1.5}
    assert tagged({"step": 9, "final": True, "val_loss": 1.0}) == {"final/loss": 1.0}


def _train(data, out, tracker, capsys):
    rc = main(["train", "--data", str(data), "--out", str(out), "--max-steps", "4", *TINY, "--track", tracker])
    assert rc == 0, capsys.readouterr().err


def test_tensorboard_receives_the_metrics(data, tmp_path, capsys):
    pytest.importorskip("tensorboard")
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    _train(data, tmp_path / "r", "tensorboard", capsys)
    acc = EventAccumulator(str(tmp_path / "r" / "tensorboard"))
    acc.Reload()
    tags = set(acc.Tags()["scalars"])
    assert {"train/loss", "lr", "perf/tokens_per_s", "final/bits_per_byte"} <= tags
    assert [e.step for e in acc.Scalars("train/loss")] == [1, 2, 3, 4]


def wandb_records(path):
    """The protobuf records of an offline W&B run file (LevelDB log format: 32 KiB blocks of
    records with a 7-byte header; W&B files start with a 7-byte header of their own)."""
    import struct

    from wandb.proto import wandb_internal_pb2 as pb

    data, block, pos, parts, out = path.read_bytes(), 32768, 7, b"", []
    while pos + 7 <= len(data):
        if block - pos % block < 7:  # block trailer
            pos += block - pos % block
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):  # a full record, or the last piece of one
            r = pb.Record()
            r.ParseFromString(parts)
            out.append(r)
    return out


def test_wandb_offline_receives_the_metrics(data, tmp_path, capsys, monkeypatch):
    pytest.importorskip("wandb")
    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    _train(data, tmp_path / "r", "wandb", capsys)
    (path,) = (tmp_path / "r" / "wandb").glob("offline-run-*/run-*.wandb")
    records = wandb_records(path)
    history = [{(i.key or "/".join(i.nested_key)): json.loads(i.value_json) for i in r.history.item}
               for r in records if r.WhichOneof("record_type") == "history"]
    assert [h["_step"] for h in history] == [1, 2, 3, 4]
    assert all("train/loss" in h for h in history) and "final/bits_per_byte" in history[-1]
    (run,) = [r.run for r in records if r.WhichOneof("record_type") == "run"]
    assert "seq_len" in {i.key for i in run.config.update}


def test_mlflow_file_store_receives_the_metrics(data, tmp_path, capsys, monkeypatch):
    mlflow = pytest.importorskip("mlflow")
    uri = (tmp_path / "mlruns").as_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    monkeypatch.setenv("MLFLOW_ALLOW_FILE_STORE", "true")  # mlflow 3 keeps the file store behind this switch
    _train(data, tmp_path / "r", "mlflow", capsys)
    client = mlflow.tracking.MlflowClient(uri)
    (run,) = client.search_runs([client.get_experiment_by_name("budgetlm").experiment_id])
    assert run.data.params["seq_len"] == "32" and "train/loss" in run.data.metrics
    assert [m.step for m in client.get_metric_history(run.info.run_id, "train/loss")] == [1, 2, 3, 4]


def test_an_unknown_or_missing_tracker_is_refused_before_training(data, tmp_path, capsys):
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--max-steps", "1", *TINY,
               "--track", "neptune"])
    assert rc == 2 and "unknown tracker 'neptune'" in capsys.readouterr().err
    assert not (tmp_path / "r").exists()
    assert MetricsLogger(None).trackers == []


def test_a_tracker_that_cannot_start_does_not_stop_training(data, tmp_path, capsys, monkeypatch):
    from budgetlm.training import track

    def broken(run_dir, config):
        raise RuntimeError("server unreachable")

    monkeypatch.setitem(track.TRACKERS, "tensorboard", ("json", "tensorboard", broken))
    rc = main(["train", "--data", str(data), "--out", str(tmp_path / "r"), "--max-steps", "2", *TINY,
               "--track", "tensorboard"])
    assert rc == 0 and "could not start (RuntimeError: server unreachable)" in capsys.readouterr().err
