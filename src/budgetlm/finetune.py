"""`budgetlm finetune`: sequence classification on top of a pre-trained model.

    budgetlm finetune --model RUN --train train.tsv --val dev.tsv --out RUN-sst2 \\
        --text-column sentence --label-column label --epochs 3

Sources: a budgetlm run (masked or causal backbone; `models.heads.SequenceClassifier`, whose head
matches transformers' ModernBert/Llama sequence-classification heads so `export` can convert it), or
a local Hugging Face model folder (`AutoModelForSequenceClassification`, e.g. a BERT you already
have). `--from-scratch` keeps the architecture and tokenizer but not the weights: the "no
pre-training" baseline.

Training goes through THE shared loop (`train.loop.train_loop`): AdamW with weight decay on matrices,
linear warm-up then linear decay (BERT's fine-tuning recipe, Devlin et al. 2019), gradient clipping,
dropout in the head and backbone. Validation runs every epoch (or every `--eval-every` steps); the best
checkpoint on `--metric` is the only one kept; `--patience` evaluations without improvement stop the
run early. Results: RUN/metrics.json, RUN/metrics.jsonl (history), RUN/report.md + RUN/val_metric.png.

How the shared loop serves fine-tuning:
- early stopping: the evaluate callback returns `{"stop": True}` once `--patience` validations
  brought no gain; the loop then ends the run (`LoopResult.stopped_early`).
- evaluation every N steps: `LoopConfig.eval_every_steps` (N = `--eval-every`, or one epoch), exact
  under a time budget too.
- best checkpoint on a metric: saved from the evaluate callback (checkpoint.save_checkpoint,
  keep_last=1, saved only on improvement, so the latest checkpoint is the best one).
"""

from __future__ import annotations

import argparse
import math
import shutil
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from budgetlm import runtime, ui
from budgetlm.config import BudgetError, add_dataclass_args, from_args, parse_duration, to_dict, write_json_atomic
from budgetlm.labelled import (
    BudgetlmEncoder,
    HFEncoder,
    Labelled,
    collate,
    encode_labels,
    label_names,
    read_hf_dataset,
    read_labelled,
)
from budgetlm.metrics import classification_metrics, metrics_table_rows
from budgetlm.hf import HFClassifier
from budgetlm.train import checkpoint as ckpt_mod
from budgetlm.train.checkpoint import CheckpointMeta, ClassifierInfo


@dataclass
class FinetuneConfig:
    model: str = ""  # budgetlm run directory (masked or causal LM) or a local Hugging Face model folder
    train: str = ""  # labelled training file: .csv, .tsv (header row) or .jsonl, optionally .gz/.xz/.bz2/.zst
    val: str = ""  # labelled validation file (default: 10% of --train held out)
    out: str = ""  # run directory to create for the fine-tuned classifier
    hf_dataset: str = ""  # instead of files: a Hugging Face dataset (local or cached), NAME or NAME:CONFIG
    train_split: str = "train"  # --hf-dataset split to train on
    val_split: str = "validation"  # --hf-dataset split to validate on
    text_column: str = "text"  # column holding the text
    text_pair_column: str = ""  # column holding the second text of sentence-pair tasks (empty = none)
    label_column: str = "label"  # column holding the label (strings or integers, any number of classes)
    budget: str = ""  # wall-clock training budget (90s, 5m, 1h); with --epochs, whichever ends first
    epochs: float = 0.0  # passes over the training set (0 = 3 when no --budget is given)
    batch_size: int = 32  # examples per optimizer step
    max_len: int = 0  # tokens per example incl. special tokens; longer texts are truncated (0 = min(128, context))
    truncate: Literal["head", "tail", "head+tail"] = "head"  # what a too-long text keeps: its start, its end, or both (1/4 start + 3/4 end)
    lr: float = 1e-4  # peak learning rate
    weight_decay: float = 0.01  # decoupled weight decay on matrices
    warmup: float = 0.1  # fraction of training spent warming the LR up (then linear decay to 0)
    dropout: float = 0.1  # dropout in backbone and head while fine-tuning
    ema: float = 0.0  # per-step decay of a moving average of the weights, validated and saved in their place (0 = off; 0.999 ~ the last 1,000 steps)
    eval_every: int = 0  # optimizer steps between validations (0 = once per epoch)
    patience: int = 3  # validations without improvement before stopping early (0 = never)
    metric: Literal["accuracy", "f1_macro"] = "accuracy"  # validation metric for early stopping and the best checkpoint
    pooling: Literal["auto", "cls", "mean", "last"] = "auto"  # sentence vector: auto = cls (masked) / last token (causal)
    from_scratch: bool = False  # keep architecture and tokenizer, re-initialise the weights (no pre-training baseline)
    seed: int = 0  # random seed (initialisation, shuffling, dropout)
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (training compute; evaluation is fp32)
    overwrite: bool = False  # replace an existing --out run


# --------------------------------------------------------------------------------------------------
# encoders


def make_encoder(meta: CheckpointMeta):
    """The tokenizer + input layout a classifier was fine-tuned with."""
    info = meta.classifier
    if meta.kind == "hf-classifier":
        from transformers import AutoTokenizer

        return HFEncoder(AutoTokenizer.from_pretrained(str(meta.run_dir / "hf_tokenizer")), info.max_len, info.truncate)
    from budgetlm.data.tokenizer import load_tokenizer

    if not meta.tokenizer_path:
        raise BudgetError(f"{meta.run_dir} has no tokenizer.json next to its checkpoint")
    return BudgetlmEncoder(load_tokenizer(meta.tokenizer_path), meta.causal, info.max_len, info.truncate)


# --------------------------------------------------------------------------------------------------
# sources: what --model points at


def _is_hf_folder(path: Path) -> bool:
    return (path / "config.json").is_file() and not (path / "checkpoints").is_dir()


def _load_budgetlm_source(cfg: FinetuneConfig, labels: list[str]):
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.models.heads import SequenceClassifier
    from budgetlm.train.checkpoint import load_model

    lm, meta = load_model(cfg.model, device="cpu")
    if meta.kind != "lm":
        raise BudgetError(f"{cfg.model} is already a fine-tuned classifier: pass the pre-trained run")
    if not meta.tokenizer_path:
        raise BudgetError(f"{cfg.model} has no tokenizer.json next to its checkpoint")
    pooling = None if cfg.pooling == "auto" else cfg.pooling
    try:
        if cfg.from_scratch:
            clf = SequenceClassifier(replace(lm.cfg, dropout=cfg.dropout), len(labels), pooling=pooling, dropout=cfg.dropout)
        else:
            clf = SequenceClassifier.from_lm(lm, len(labels), pooling=pooling, dropout=cfg.dropout)
    except ValueError as e:  # e.g. pooling "cls" asked of a causal backbone
        raise BudgetError(str(e)) from None
    cfg.max_len = cfg.max_len or min(128, lm.cfg.max_seq_len)
    if cfg.max_len > lm.cfg.max_seq_len:
        raise BudgetError(f"--max-len {cfg.max_len} exceeds the model's context ({lm.cfg.max_seq_len} tokens)")
    encoder = BudgetlmEncoder(load_tokenizer(meta.tokenizer_path), lm.cfg.causal, cfg.max_len, cfg.truncate)
    ckpt_meta = CheckpointMeta(kind="classifier", model_config=to_dict(clf.cfg), objective="classification",
                               classifier=ClassifierInfo(labels, cfg.max_len, pooling=clf.pooling,
                                                         source_run=str(Path(cfg.model).resolve()),
                                                         source_objective="causal" if lm.cfg.causal else "masked"))
    return clf, encoder, ckpt_meta, meta.tokenizer_path


def _load_hf_source(cfg: FinetuneConfig, labels: list[str], out: Path):
    try:
        from transformers import AutoConfig, AutoModelForSequenceClassification, AutoTokenizer
    except ImportError:
        raise BudgetError("a Hugging Face --model needs transformers: pip install 'budgetlm[hf]'") from None
    try:
        tok = AutoTokenizer.from_pretrained(cfg.model, local_files_only=True)
        config = AutoConfig.from_pretrained(cfg.model, local_files_only=True)
    except Exception as e:  # noqa: BLE001
        raise BudgetError(f"cannot load the Hugging Face model in {cfg.model}: {str(e).splitlines()[0]}") from None
    id2label = dict(enumerate(labels))
    overrides: dict[str, Any] = dict(num_labels=len(labels), id2label=id2label, label2id={v: k for k, v in id2label.items()})
    for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "classifier_dropout", "dropout"):
        if hasattr(config, name):
            overrides[name] = cfg.dropout
    limit = min(getattr(tok, "model_max_length", 10**9) or 10**9, getattr(config, "max_position_embeddings", 10**9))
    cfg.max_len = min(cfg.max_len or 128, limit)
    encoder = HFEncoder(tok, cfg.max_len, cfg.truncate)
    config.update(overrides)
    if config.pad_token_id is None:
        config.pad_token_id = encoder.pad_id  # decoder-only classifiers find the last real token by it
    if cfg.from_scratch:
        hf = AutoModelForSequenceClassification.from_config(config)
    else:
        hf = AutoModelForSequenceClassification.from_pretrained(
            cfg.model, config=config, local_files_only=True, ignore_mismatched_sizes=True
        )
    tok.save_pretrained(str(out / "hf_tokenizer"))
    ckpt_meta = CheckpointMeta(kind="hf-classifier", model_config=config.to_dict(), objective="classification",
                               classifier=ClassifierInfo(labels, cfg.max_len, source_run=str(Path(cfg.model).resolve())))
    return HFClassifier(hf), encoder, ckpt_meta, None


# --------------------------------------------------------------------------------------------------
# data


def _read_split(cfg: FinetuneConfig, which: str) -> Labelled | None:
    cols = (cfg.text_column, cfg.text_pair_column, cfg.label_column)
    if cfg.hf_dataset:
        split = cfg.train_split if which == "train" else cfg.val_split
        return read_hf_dataset(cfg.hf_dataset, split, *cols)
    path = cfg.train if which == "train" else cfg.val
    return read_labelled(path, *cols) if path else None


def _hold_out(data: Labelled, frac: float, seed: int) -> tuple[Labelled, Labelled]:
    n = len(data.texts)
    if n < 10:
        raise BudgetError(f"{data.source} has {n} rows: too few to hold out a validation set; pass --val")
    perm = np.random.default_rng(seed).permutation(n)
    k = max(1, int(round(frac * n)))
    val_i, tr_i = sorted(perm[:k]), sorted(perm[k:])

    def take(ix, tag):
        return Labelled(
            [data.texts[i] for i in ix],
            [data.pairs[i] for i in ix] if data.pairs is not None else None,
            [data.labels[i] for i in ix],
            f"{data.source} ({tag})",
        )

    return take(tr_i, "train part"), take(val_i, "held-out 10%")


class Batches:
    """Shuffled epochs of padded micro-batches for the loop: each call returns the next batch dict.

    Batches group examples of similar length (sort within random pools of 50 batches, then shuffle
    the batches, like transformers' `group_by_length`): far less padding for corpora of mixed length
    such as SST-2's phrases, while every epoch still sees the data in a fresh random order."""

    POOL = 50  # batches per sorting pool

    def __init__(self, seqs, labels: np.ndarray, token_types, pad_id: int, batch_size: int, seed: int):
        self.seqs, self.labels, self.tt, self.pad_id = seqs, labels, token_types, pad_id
        self.lengths = np.array([len(s) for s in seqs])
        self.batch_size = batch_size
        self.rng = np.random.default_rng(seed)
        self.plan: list[np.ndarray] = []
        self.epoch = 0

    @property
    def steps_per_epoch(self) -> int:
        return math.ceil(len(self.seqs) / self.batch_size)

    def _new_epoch(self) -> None:
        perm = self.rng.permutation(len(self.seqs))
        pool = self.batch_size * self.POOL
        batches = []
        for i in range(0, len(perm), pool):
            chunk = perm[i : i + pool]
            chunk = chunk[np.argsort(self.lengths[chunk], kind="stable")]
            batches += [chunk[j : j + self.batch_size] for j in range(0, len(chunk), self.batch_size)]
        self.plan = [batches[k] for k in self.rng.permutation(len(batches))]
        self.epoch += 1

    def __call__(self) -> dict[str, torch.Tensor]:
        if not self.plan:
            self._new_epoch()
        ix = self.plan.pop()
        idx, mask, tt = collate([self.seqs[i] for i in ix], self.pad_id, [self.tt[i] for i in ix] if self.tt else None)
        batch = {"idx": idx, "attention_mask": mask, "labels": torch.as_tensor(self.labels[ix])}
        if tt is not None:
            batch["token_type_ids"] = tt
        return batch


# --------------------------------------------------------------------------------------------------
# the command


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, FinetuneConfig)


def _check_config(cfg: FinetuneConfig) -> None:
    if not cfg.model:
        raise BudgetError("--model is required: a budgetlm run directory or a Hugging Face model folder")
    if not Path(cfg.model).exists():
        raise BudgetError(f"no model at {cfg.model}")
    if not cfg.out:
        raise BudgetError("--out is required: the run directory to create")
    if not cfg.hf_dataset and not cfg.train:
        raise BudgetError("give --train FILE (and --val FILE) or --hf-dataset NAME")
    out = Path(cfg.out)
    if out.exists() and any(out.iterdir()) and not cfg.overwrite:
        raise BudgetError(f"{out} already exists and is not empty: choose another --out or pass --overwrite")
    if cfg.truncate == "head+tail" and _is_hf_folder(Path(cfg.model)):
        raise BudgetError("--truncate head+tail needs a budgetlm model: a Hugging Face model folder takes head or tail")
    if Path(cfg.model).resolve() == out.resolve():
        raise BudgetError("--out must differ from --model")
    if cfg.batch_size < 1 or cfg.max_len < 0:
        raise BudgetError("--batch-size must be at least 1 and --max-len at least 0")
    if cfg.epochs < 0 or cfg.lr <= 0 or not 0 <= cfg.dropout < 1 or not 0 <= cfg.warmup < 1:
        raise BudgetError("--epochs >= 0, --lr > 0, 0 <= --dropout < 1 and 0 <= --warmup < 1 are required")
    if not 0 <= cfg.ema < 1:
        raise BudgetError(f"--ema is a decay in [0, 1) (0 = off), got {cfg.ema:g}")


def run(args: argparse.Namespace) -> dict[str, Any]:
    cfg = from_args(FinetuneConfig, args)
    _check_config(cfg)
    budget_s = parse_duration(cfg.budget) if cfg.budget else None
    epochs = cfg.epochs or (0.0 if budget_s else 3.0)

    # ---- data and labels: every input check happens before anything is written
    train = _read_split(cfg, "train")
    names = label_names(train.labels)
    val = _read_split(cfg, "val")
    if val is None:
        train, val = _hold_out(train, 0.1, cfg.seed)
    if val.labels is None:
        raise BudgetError(f"{val.source} has no {cfg.label_column!r} column")
    y_train = encode_labels(train.labels, names, train.source)
    y_val = encode_labels(val.labels, names, val.source)

    rt = runtime.init_runtime(cfg.device, cfg.precision, seed=cfg.seed)
    out = Path(cfg.out)
    if out.exists() and cfg.overwrite:
        shutil.rmtree(out / "checkpoints", ignore_errors=True)
    out.mkdir(parents=True, exist_ok=True)
    if _is_hf_folder(Path(cfg.model)):
        model, encoder, ckpt_meta, tokenizer_path = _load_hf_source(cfg, names, out)
    else:
        model, encoder, ckpt_meta, tokenizer_path = _load_budgetlm_source(cfg, names)
    ckpt_meta.run_config = to_dict(cfg)
    ckpt_meta.classifier = replace(ckpt_meta.classifier, max_len=cfg.max_len, truncate=cfg.truncate,
                                   text_column=cfg.text_column, text_pair_column=cfg.text_pair_column,
                                   label_column=cfg.label_column)
    setup = runtime.prepare_training(model, rt, compile="off")
    model = setup.model

    t_tok = time.perf_counter()
    tr_seqs, tr_tt = encoder(train.texts, train.pairs)
    va_seqs, va_tt = encoder(val.texts, val.pairs)
    ui.info(
        f"fine-tuning {'Hugging Face' if ckpt_meta.kind == 'hf-classifier' else 'budgetlm'} model from {cfg.model} on {len(tr_seqs):,} examples "
        f"({len(names)} classes: {', '.join(names[:10])}), validating on {len(va_seqs):,} "
        f"[tokenized in {time.perf_counter() - t_tok:.1f}s; {rt.device_type} {rt.precision}]"
    )
    batches = Batches(tr_seqs, y_train, tr_tt, encoder.pad_id, cfg.batch_size, cfg.seed)
    max_steps = math.ceil(epochs * batches.steps_per_epoch) if epochs else None
    eval_steps = cfg.eval_every or batches.steps_per_epoch
    # Under a time budget with no --eval-every the number of steps is unknown in advance: validate
    # every tenth of the budget as well, so a short budget on a large set still gets validations.
    eval_frac = 0.1 if (not max_steps and not cfg.eval_every) else 0.0

    from budgetlm.train.loop import LoopConfig, LoopHooks, MetricsLogger, graceful_stop, train_loop
    from budgetlm.train.optim import OptimConfig, build_optimizer
    from budgetlm.train.schedule import ScheduleConfig

    optimizer = build_optimizer(
        "adamw", model, OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, beta1=0.9, beta2=0.999)
    )
    loop_cfg = LoopConfig(
        budget_s=budget_s, max_steps=max_steps, grad_clip=1.0, eval_every=eval_frac, eval_every_steps=eval_steps,
        checkpoint_every_s=0, log_every=max(1, min(50, batches.steps_per_epoch // 4)),
    )
    schedule = ScheduleConfig(warmup=cfg.warmup, decay="linear")
    logger = MetricsLogger(out / "metrics.jsonl")
    best: dict[str, Any] = {"score": -1.0, "loss": math.inf, "step": None, "metrics": None, "bad_evals": 0}
    # Weight averaging (Polyak & Juditsky 1992; an EMA as in Kaddour 2022 and timm): validation and the
    # saved checkpoint use the averaged weights, which are less noisy than the last step's.
    averaged = None
    if cfg.ema:
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(runtime.unwrap(model), multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)).eval()
    evals: list[dict[str, Any]] = []

    def evaluate(m: nn.Module, state) -> dict[str, Any]:
        m = averaged.module if averaged is not None else m
        probs = _predict(m, va_seqs, va_tt, encoder.pad_id, rt.device)
        met = classification_metrics(y_val, probs.argmax(-1), names)
        val_loss = float(-np.log(np.clip(probs[np.arange(len(y_val)), y_val], 1e-12, None)).mean())
        step = state.step
        score = met[cfg.metric]
        # ties on the metric (common once accuracy saturates) are broken by a clear drop (1e-4) in
        # validation loss, so that noise-level changes do not reset the patience
        improved = score > best["score"] or (score == best["score"] and val_loss < best["loss"] - 1e-4)
        if improved:
            best.update(score=score, loss=val_loss, step=step, metrics=met, bad_evals=0)
            ckpt_mod.save_checkpoint(out, step, runtime.unwrap(m), replace(ckpt_meta, metrics=met),
                                     tokenizer_path=tokenizer_path, keep_last=1)
        else:
            best["bad_evals"] += 1
        evals.append({"step": step, "epoch": round(step / batches.steps_per_epoch, 3), "val_loss": val_loss,
                      "accuracy": met["accuracy"], "f1_macro": met["f1_macro"]})
        ui.info(
            f"step {step}: val {cfg.metric} {score:.4f} (loss {val_loss:.4f})"
            + ("  [best, saved]" if improved else f"  [no gain {best['bad_evals']}/{cfg.patience or '-'}]")
        )
        stop = bool(cfg.patience) and best["bad_evals"] >= cfg.patience
        return {"val_loss": val_loss, f"val_{cfg.metric}": score, "stop": stop}

    t0 = time.perf_counter()
    hooks = LoopHooks(evaluate=evaluate)
    if averaged is not None:
        hooks.on_step = lambda m, state: averaged.update_parameters(m)
    with graceful_stop() as stop:
        result = train_loop(setup, batches, optimizer, rt, loop_cfg, schedule, hooks=hooks, metrics=logger, stop=stop)
    logger.close()
    signalled = result.interrupted
    if not evals or evals[-1]["step"] != result.state.step:
        with torch.no_grad():
            evaluate(model, result.state)  # the final state always gets a validation
    elapsed = time.perf_counter() - t0
    if best["metrics"] is None:
        raise BudgetError("no validation ran: the budget ended before the first step")
    summary = {
        "run_dir": str(out),
        "backbone": "hf" if ckpt_meta.kind == "hf-classifier" else "budgetlm",
        "source": cfg.model,
        "from_scratch": cfg.from_scratch,
        "labels": names,
        "train_examples": len(tr_seqs),
        "val_examples": len(va_seqs),
        "steps": result.state.step,
        "epochs": round(result.state.step / batches.steps_per_epoch, 3),
        "best_step": best["step"],
        "early_stopped": result.stopped_early,
        "interrupted": signalled,
        "train_seconds": round(result.state.elapsed_s, 2),
        "wall_seconds": round(elapsed, 2),
        "metric": cfg.metric,
        "history": evals,
        **{k: best["metrics"][k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro",
                                           "per_class", "confusion_matrix")},
    }
    write_json_atomic(out / "metrics.json", summary)
    _write_report(out, summary, cfg)
    ui.table(f"best validation (step {best['step']})", ["class", "precision", "recall", "f1", "support"],
             metrics_table_rows(best["metrics"]))
    ui.info(
        f"accuracy {summary['accuracy']:.4f}  f1_macro {summary['f1_macro']:.4f}  "
        f"({summary['steps']} steps, {summary['epochs']} epochs, {summary['train_seconds']:.0f}s"
        + (", stopped early" if summary["early_stopped"] else "") + f"); report: {out / 'report.md'}"
    )
    ui.info(f"next: budgetlm classify --model {out} --text \"...\"   or   budgetlm serve --model {out}")
    return summary


def _predict(model, seqs, token_types, pad_id, device) -> np.ndarray:
    from budgetlm.classify import predict_proba

    return predict_proba(model, seqs, pad_id, 128, token_types, device)


# --------------------------------------------------------------------------------------------------
# report


def _write_report(out: Path, s: dict[str, Any], cfg: FinetuneConfig) -> None:
    import os

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    hist = s["history"]
    fig, ax = plt.subplots(figsize=(6, 3.5))
    ax.plot([h["step"] for h in hist], [h[s["metric"]] for h in hist], marker="o", label=f"val {s['metric']}")
    if s["best_step"] is not None:
        ax.axvline(s["best_step"], color="grey", linestyle=":", label="best checkpoint")
    ax.set_xlabel("optimizer step")
    ax.set_ylabel(s["metric"])
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp_png = out / f".val_metric.png.tmp-{os.getpid()}"
    fig.savefig(tmp_png, format="png", dpi=100)
    plt.close(fig)
    os.replace(tmp_png, out / "val_metric.png")

    labels = s["labels"]
    lines = [
        f"# Fine-tuning report: {out.name}",
        "",
        f"- source: `{s['source']}` ({s['backbone']}{', re-initialised' if s['from_scratch'] else ''})",
        f"- data: {s['train_examples']:,} training / {s['val_examples']:,} validation examples, {len(labels)} classes",
        f"- training: {s['steps']} steps ({s['epochs']} epochs) in {s['train_seconds']:.1f}s; "
        f"best step {s['best_step']}" + ("; stopped early" if s["early_stopped"] else ""),
        f"- settings: lr {cfg.lr:g}, batch {cfg.batch_size}, max_len {cfg.max_len} (truncate {cfg.truncate}), "
        f"warm-up {cfg.warmup:g}, weight decay {cfg.weight_decay:g}, dropout {cfg.dropout:g}, patience {cfg.patience}"
        + (f", weights averaged (EMA decay {cfg.ema})" if cfg.ema else ""),
        "",
        "## Best validation metrics",
        "",
        f"accuracy **{s['accuracy']:.4f}**, precision (macro) {s['precision_macro']:.4f}, "
        f"recall (macro) {s['recall_macro']:.4f}, F1 (macro) **{s['f1_macro']:.4f}**",
        "",
        "| class | precision | recall | f1 | support |",
        "|---|---|---|---|---|",
    ]
    for name, m in s["per_class"].items():
        lines.append(f"| {name} | {m['precision']:.4f} | {m['recall']:.4f} | {m['f1']:.4f} | {m['support']} |")
    lines += ["", "Confusion matrix (rows: true, columns: predicted)", "",
              "| | " + " | ".join(labels) + " |", "|---" * (len(labels) + 1) + "|"]
    for name, row in zip(labels, s["confusion_matrix"]):
        lines.append(f"| **{name}** | " + " | ".join(str(x) for x in row) + " |")
    lines += ["", f"![validation {s['metric']}](val_metric.png)", "", "## Validation history", "",
              "| step | epoch | val loss | accuracy | f1 macro |", "|---|---|---|---|---|"]
    for h in hist:
        lines.append(f"| {h['step']} | {h['epoch']} | {h['val_loss']:.4f} | {h['accuracy']:.4f} | {h['f1_macro']:.4f} |")
    tmp = out / f".report.md.tmp-{os.getpid()}"
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    os.replace(tmp, out / "report.md")


# --------------------------------------------------------------------------------------------------
# `budgetlm eval` of a classifier


def evaluate_classifier(args: argparse.Namespace) -> dict[str, Any]:
    """Metrics of a fine-tuned run on a labelled file; called by `budgetlm eval` for classifiers.

    The file comes from `--text FILE` (or `--data FILE`); its columns default to those used when
    fine-tuning (`--text-column`/`--label-column` override when the eval parser has them)."""
    from budgetlm.classify import load_ensemble

    runs = list(args.model)  # several runs: an ensemble (classify.Ensemble)
    paths = list(getattr(args, "text", None) or []) or ([args.data] if getattr(args, "data", None) else [])
    if len(paths) != 1:
        raise BudgetError("evaluating a classifier needs one labelled file: --text FILE (.csv/.tsv/.jsonl)")
    device = getattr(args, "device", "cpu")
    device = "cpu" if device in (None, "auto") else device
    quantize = getattr(args, "quantize", "none") or "none"
    clf = load_ensemble(runs, device=device, quantize=quantize, which=getattr(args, "which", "best"))
    info = clf.meta.classifier
    text_col = getattr(args, "text_column", None) or info.text_column
    pair_col = getattr(args, "text_pair_column", None)
    pair_col = info.text_pair_column if pair_col is None else pair_col
    label_col = getattr(args, "label_column", None) or info.label_column
    data = read_labelled(paths[0], text_col, pair_col, label_col)
    y = encode_labels(data.labels, clf.labels, data.source)
    t0 = time.perf_counter()
    probs = clf.predict(data.texts, data.pairs, max(1, int(getattr(args, "batch_size", 64) or 64)))
    seconds = time.perf_counter() - t0
    met = classification_metrics(y, probs.argmax(-1), clf.labels)
    ui.table(f"{data.source}: {len(y):,} examples", ["class", "precision", "recall", "f1", "support"],
             metrics_table_rows(met))
    ui.info(f"accuracy {met['accuracy']:.4f}  f1_macro {met['f1_macro']:.4f}  "
            f"({len(y) / max(seconds, 1e-9):.0f} examples/s{', int8' if quantize == 'int8' else ''})")
    return {"objective": "classification", "model": str(runs[0]) if len(runs) == 1 else [str(r) for r in runs],
            "file": str(paths[0]),
            "quantize": quantize, "seconds": round(seconds, 4), **met}
