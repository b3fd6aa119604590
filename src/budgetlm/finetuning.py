"""Fine-tuning for sequence classification on top of a pre-trained model: `finetune(FinetuneConfig)`.

    budgetlm finetune --model RUN --train train.tsv --val dev.tsv --out RUN-sst2 \\
        --text-column sentence --label-column label --epochs 3

Sources: a budgetlm run (masked or causal backbone; `models.heads.SequenceClassifier`, whose head
matches transformers' ModernBert/Llama sequence-classification heads so `export` can convert it), or
a local Hugging Face model folder (`AutoModelForSequenceClassification`, e.g. a BERT you already
have). `from_scratch` keeps the architecture and tokenizer but not the weights: the "no
pre-training" baseline.

Training goes through the shared set-up and loop of pre-training (`runtime.prepare_training`,
`train.loop.train_loop`): AdamW with weight decay on matrices, linear warm-up then linear decay
(BERT's fine-tuning recipe, Devlin et al. 2019), gradient clipping, dropout in the head and backbone,
fp16 with a gradient scaler where the device computes in fp16. Validation runs every epoch (or every
`eval_every` steps) from the loop's evaluation hook, which receives the loop state; the best
checkpoint on `metric` is the only one kept; `patience` validations without improvement stop the run
early; a weight average (`ema`) is updated in the loop's `on_step` hook.

The run is built in a temporary folder next to `out` and swapped in when complete, so a crash never
leaves half a classifier and `overwrite` replaces an earlier classifier only by a finished one.
Results: RUN/metrics.json, RUN/metrics.jsonl (history), RUN/report.md + RUN/val_metric.png.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
from torch import nn

from budgetlm import fsio, runtime, ui
from budgetlm.config import BudgetError, check_ranges, parse_duration, ranged, to_dict
from budgetlm.hf import HFClassifier, dropout_overrides
from budgetlm.hfmodels import is_hf_folder
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
from budgetlm.metrics import classification_metrics
from budgetlm.training import checkpoint as ckpt_mod
from budgetlm.training.checkpoint import CheckpointMeta, ClassifierInfo


@dataclass
class FinetuneConfig:
    task: Literal["classify", "qa", "seq2seq"] = "classify"  # classify: labelled texts; qa: extractive question answering on SQuAD-format JSON (masked runs, Hugging Face BERT-family folders); seq2seq: source -> target pairs (causal runs)
    model: str = ""  # budgetlm run directory (masked or causal LM) or a local Hugging Face model folder
    train: str = ""  # training file: labelled .csv, .tsv (header row) or .jsonl, optionally .gz/.xz/.bz2/.zst; SQuAD .json for --task qa
    val: str = ""  # validation file, same format (default: 10% of --train held out)
    out: str = ""  # run directory to create for the fine-tuned classifier
    train_target: str = ""  # seq2seq: target text file aligned line by line with --train (then a source text file); empty: --train is a .csv/.tsv/.jsonl with both columns
    val_target: str = ""  # seq2seq: target text file aligned with --val
    source_column: str = "source"  # seq2seq: column of the source text in a .csv/.tsv/.jsonl file
    target_column: str = "target"  # seq2seq: column of the target text
    template: str = "{source}\n=>"  # seq2seq: the prompt a source becomes ({source} is replaced); stored with the run
    hf_dataset: str = ""  # instead of files: a Hugging Face dataset (local or cached), NAME or NAME:CONFIG
    train_split: str = "train"  # --hf-dataset split to train on
    val_split: str = "validation"  # --hf-dataset split to validate on
    text_column: str = "text"  # column holding the text
    text_pair_column: str = ""  # column holding the second text of sentence-pair tasks (empty = none)
    label_column: str = "label"  # column holding the label (strings or integers, any number of classes)
    budget: str = ""  # wall-clock training budget (90s, 5m, 1h); with --epochs, whichever ends first
    epochs: float = ranged(0.0, 0.0, 10000.0)  # passes over the training set (0 = 3 when no --budget is given)
    batch_size: int = ranged(32, 1, 1 << 16)  # examples per optimizer step
    max_len: int = ranged(0, 8, 1 << 16, also=(0,))  # tokens per example incl. special tokens; longer texts are truncated (0 = min(128, context); qa: tokens per window, 0 = min(384, context))
    doc_stride: int = ranged(0, 0, 1 << 16)  # qa: context tokens shared by overlapping windows of a long context (0 = max_len / 3)
    max_answer_len: int = ranged(30, 1, 1 << 16)  # qa: longest answer, in tokens
    truncate: Literal["head", "tail", "head+tail"] = "head"  # what a too-long text keeps: its start, its end, or both (1/4 start + 3/4 end)
    lr: float = ranged(1e-4, 0.0, 10.0, above=True)  # peak learning rate
    weight_decay: float = ranged(0.01, 0.0, 10.0)  # decoupled weight decay on matrices
    warmup: float = ranged(0.1, 0.0, 0.99)  # fraction of training spent warming the LR up (then linear decay to 0)
    dropout: float = ranged(0.1, 0.0, 0.95)  # dropout in backbone and head while fine-tuning
    ema: float = ranged(0.0, 0.0, 0.99999999)  # per-step decay of a moving average of the weights, validated and saved in their place (0 = off; 0.999 ~ the last 1,000 steps)
    eval_every: int = ranged(0, 0, 10**9)  # optimizer steps between validations (0 = once per epoch)
    patience: int = ranged(3, 0, 10**6)  # validations without improvement before stopping early (0 = never)
    metric: Literal["accuracy", "f1_macro"] = "accuracy"  # classify: validation metric for early stopping and the best checkpoint (qa uses F1, seq2seq BLEU)
    pooling: Literal["auto", "cls", "mean", "last"] = "auto"  # sentence vector: auto = cls (masked) / last token (causal)
    from_scratch: bool = False  # keep architecture and tokenizer, re-initialise the weights (no pre-training baseline)
    seed: int = ranged(0, 0, 2**63 - 1)  # random seed (initialisation, shuffling, dropout)
    device: str = "auto"  # auto | cpu | cuda | mps
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (training compute; evaluation is fp32)
    track: list[str] = field(default_factory=list)  # experiment trackers to log to: tensorboard, wandb, mlflow
    overwrite: bool = False  # replace an earlier classifier at --out (only a folder `finetune` made; swapped in when the new one is complete)

    def __post_init__(self) -> None:
        check_ranges(self)


@dataclass
class FinetuneResult:
    """What a fine-tuning run reports (also RUN/metrics.json)."""

    run_dir: str  # the run folder
    backbone: str  # budgetlm | hf
    source: str  # the model it started from
    from_scratch: bool  # weights re-initialised
    labels: list[str]  # class names
    train_examples: int  # examples trained on
    val_examples: int  # examples validated on
    steps: int  # optimizer steps
    epochs: float  # passes over the training set
    best_step: int | None  # step of the saved (best) checkpoint
    early_stopped: bool  # stopped by --patience
    interrupted: bool  # stopped by a signal
    train_seconds: float  # training time (budget clock)
    wall_seconds: float  # wall time including validations
    metric: str  # the validation metric that chose the best checkpoint
    history: list[dict[str, Any]]  # every validation
    metrics: dict[str, Any]  # the best validation's accuracy, precision, recall, F1, per class, confusion matrix

    def to_json(self) -> dict[str, Any]:
        d = to_dict(self)
        return {**{k: v for k, v in d.items() if k != "metrics"},
                **{k: self.metrics[k] for k in ("accuracy", "precision_macro", "recall_macro", "f1_macro", "per_class",
                                                "confusion_matrix", "bleu", "chrf", "exact_match", "f1") if k in self.metrics}}


# --------------------------------------------------------------------------------------------------
# sources: what --model points at


def _load_budgetlm_source(cfg: FinetuneConfig, labels: list[str]):
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.models.heads import SequenceClassifier
    from budgetlm.training.checkpoint import load_model

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
    overrides.update(dropout_overrides(config, cfg.dropout))
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
# checks and inputs


def check_config(cfg: FinetuneConfig) -> None:
    """Every refusal that needs no model and no data, before anything is read or written."""
    if not cfg.model:
        raise BudgetError("--model is required: a budgetlm run directory or a Hugging Face model folder")
    if not Path(cfg.model).exists():
        raise BudgetError(f"no model at {cfg.model}")
    if not cfg.out:
        raise BudgetError("--out is required: the run directory to create")
    if not cfg.hf_dataset and not cfg.train:
        raise BudgetError("give --train FILE (and --val FILE) or --hf-dataset NAME")
    if cfg.truncate == "head+tail" and is_hf_folder(Path(cfg.model)):
        raise BudgetError("--truncate head+tail needs a budgetlm model: a Hugging Face model folder takes head or tail")
    if cfg.budget:
        parse_duration(cfg.budget)
    from budgetlm.training.track import check_trackers

    check_trackers(cfg.track)
    fsio.check_output(cfg.out, [cfg.model, cfg.train, cfg.val], "finetune", overwrite=cfg.overwrite,
                      made_by=fsio.read_marker(cfg.out) or ("finetune" if (Path(cfg.out) / "metrics.json").is_file() else None))


@dataclass
class _Data:
    train: Labelled
    val: Labelled
    names: list[str]  # class names
    y_train: np.ndarray
    y_val: np.ndarray


def _read_data(cfg: FinetuneConfig) -> _Data:
    """Both splits and their labels; every input check happens before anything is written."""
    train = _read_split(cfg, "train")
    names = label_names(train.labels)
    val = _read_split(cfg, "val")
    if val is None:
        train, val = _hold_out(train, 0.1, cfg.seed)
    if val.labels is None:
        raise BudgetError(f"{val.source} has no {cfg.label_column!r} column")
    return _Data(train, val, names, encode_labels(train.labels, names, train.source),
                 encode_labels(val.labels, names, val.source))


# --------------------------------------------------------------------------------------------------
# validation: the loop's evaluation hook


class Validator:
    """The loop's evaluation hook for every fine-tuning task: measures on the held-out split, keeps the
    best checkpoint on the task's score, counts patience. Tasks supply `measure`."""

    def __init__(self, cfg, out: Path, meta: CheckpointMeta, tokenizer_path, steps_per_epoch: int, averaged=None,
                 metric: str = ""):
        self.cfg, self.out, self.meta, self.tokenizer_path = cfg, out, meta, tokenizer_path
        self.steps_per_epoch, self.averaged, self.metric = steps_per_epoch, averaged, metric or cfg.metric
        self.score, self.loss, self.best_step, self.best, self.bad = -math.inf, math.inf, None, None, 0
        self.history: list[dict[str, Any]] = []

    def measure(self, model: nn.Module) -> tuple[float, float | None, dict[str, Any], dict[str, Any]]:
        """(score, validation loss or None, all metrics, the fields a history entry records)."""
        raise NotImplementedError

    def __call__(self, model: nn.Module, state) -> dict[str, Any]:
        model = self.averaged.module if self.averaged is not None else model
        was = model.training
        model.eval()  # no dropout: the saved model is measured as `eval`, `classify` and `answer` will run it
        try:
            score, val_loss, met, record = self.measure(model)
        finally:
            model.train(was)
        loss = math.inf if val_loss is None else val_loss
        # ties on the metric (common once accuracy saturates) are broken by a clear drop (1e-4) in
        # validation loss, so that noise-level changes do not reset the patience
        improved = score > self.score or (score == self.score and loss < self.loss - 1e-4)
        if improved:
            self.score, self.loss, self.best_step, self.best, self.bad = score, loss, state.step, met, 0
            ckpt_mod.save_checkpoint(self.out, state.step, runtime.unwrap(model), replace(self.meta, metrics=met),
                                     tokenizer_path=self.tokenizer_path, keep_last=1)
        else:
            self.bad += 1
        self.history.append({"step": state.step, "epoch": round(state.step / self.steps_per_epoch, 3), **record})
        ui.info(f"step {state.step}: val {self.metric} {score:.4f}" + (f" (loss {val_loss:.4f})" if val_loss is not None else "")
                + ("  [best, saved]" if improved else f"  [no gain {self.bad}/{self.cfg.patience or '-'}]"))
        stop = bool(self.cfg.patience) and self.bad >= self.cfg.patience
        return {**({"val_loss": val_loss} if val_loss is not None else {}), f"val_{self.metric}": score, "stop": stop}


class _ClassifierValidator(Validator):
    def __init__(self, cfg: FinetuneConfig, out: Path, meta: CheckpointMeta, tokenizer_path, seqs, token_types,
                 pad_id: int, y: np.ndarray, names: list[str], steps_per_epoch: int, device, averaged=None):
        super().__init__(cfg, out, meta, tokenizer_path, steps_per_epoch, averaged)
        self.seqs, self.tt, self.pad_id, self.y, self.names, self.device = seqs, token_types, pad_id, y, names, device

    def measure(self, model: nn.Module):
        from budgetlm.classify import predict_proba

        probs = predict_proba(model, self.seqs, self.pad_id, 128, self.tt, self.device)
        met = classification_metrics(self.y, probs.argmax(-1), self.names)
        val_loss = float(-np.log(np.clip(probs[np.arange(len(self.y)), self.y], 1e-12, None)).mean())
        return met[self.cfg.metric], val_loss, met, {"val_loss": val_loss, "accuracy": met["accuracy"],
                                                     "f1_macro": met["f1_macro"]}


# --------------------------------------------------------------------------------------------------
# the run


def _source(cfg: FinetuneConfig, names: list[str], tmp: Path):
    """(model, encoder, checkpoint meta, tokenizer path) of what --model points at."""
    if is_hf_folder(Path(cfg.model)):
        model, encoder, meta, tok = _load_hf_source(cfg, names, tmp)
    else:
        model, encoder, meta, tok = _load_budgetlm_source(cfg, names)
    meta.run_config = to_dict(cfg)
    meta.classifier = replace(meta.classifier, max_len=cfg.max_len, truncate=cfg.truncate, text_column=cfg.text_column,
                              text_pair_column=cfg.text_pair_column, label_column=cfg.label_column)
    return model, encoder, meta, tok


def finetune_loop(cfg, setup, batches, evaluate, rt, metrics, averaged=None):
    """The shared loop with fine-tuning's schedule, optimizer and hooks, for every fine-tuning task.

    `cfg` needs the fields budget, epochs, lr, weight_decay, warmup and eval_every (FinetuneConfig's
    names); `batches` a `steps_per_epoch` attribute; `evaluate(model, state)` is the loop's
    evaluation hook (a result with "stop": True ends the run); `averaged` an optional
    `torch.optim.swa_utils.AveragedModel` updated after every optimizer step."""
    from budgetlm.training.loop import LoopConfig, LoopHooks, graceful_stop, train_loop
    from budgetlm.training.optim import OptimConfig, build_optimizer
    from budgetlm.training.schedule import ScheduleConfig

    budget_s = parse_duration(cfg.budget) if cfg.budget else None
    epochs = cfg.epochs or (0.0 if budget_s else 3.0)
    max_steps = math.ceil(epochs * batches.steps_per_epoch) if epochs else None
    # Under a time budget with no --eval-every the number of steps is unknown in advance: validate
    # every tenth of the budget as well, so a short budget on a large set still gets validations.
    eval_frac = 0.1 if (not max_steps and not cfg.eval_every) else 0.0
    optimizer = build_optimizer("adamw", setup.model,
                                OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay, beta1=0.9, beta2=0.999))
    loop_cfg = LoopConfig(budget_s=budget_s, max_steps=max_steps, grad_clip=1.0, eval_every=eval_frac,
                          eval_every_steps=cfg.eval_every or batches.steps_per_epoch, checkpoint_every_s=0,
                          log_every=max(1, min(50, batches.steps_per_epoch // 4)))
    hooks = LoopHooks(evaluate=evaluate)
    if averaged is not None:
        hooks.on_step = lambda m, state: averaged.update_parameters(m)
    with graceful_stop() as stop:
        return train_loop(setup, batches, optimizer, rt, loop_cfg, ScheduleConfig(warmup=cfg.warmup, decay="linear"),
                          hooks=hooks, metrics=metrics, stop=stop)


def _train(cfg: FinetuneConfig, data: _Data, tmp: Path) -> FinetuneResult:
    from budgetlm.training.track import MetricsLogger

    rt = runtime.init_runtime(cfg.device, cfg.precision, seed=cfg.seed)
    model, encoder, meta, tok_path = _source(cfg, data.names, tmp)
    setup = runtime.prepare_training(model, rt, compile="off")
    t0 = time.perf_counter()
    tr_seqs, tr_tt = encoder(data.train.texts, data.train.pairs)
    va_seqs, va_tt = encoder(data.val.texts, data.val.pairs)
    ui.info(f"fine-tuning {'Hugging Face' if meta.kind == 'hf-classifier' else 'budgetlm'} model from {cfg.model} "
            f"on {len(tr_seqs):,} examples ({len(data.names)} classes: {', '.join(data.names[:10])}), validating on "
            f"{len(va_seqs):,} [tokenized in {time.perf_counter() - t0:.1f}s; {rt.device_type} {rt.precision}]")
    batches = Batches(tr_seqs, data.y_train, tr_tt, encoder.pad_id, cfg.batch_size, cfg.seed)
    averaged = None
    if cfg.ema:
        # Weight averaging (Polyak & Juditsky 1992; an EMA as in Kaddour 2022 and timm): validation and
        # the saved checkpoint use the averaged weights, which are less noisy than the last step's.
        from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

        averaged = AveragedModel(setup.model, multi_avg_fn=get_ema_multi_avg_fn(cfg.ema)).eval()
    validator = _ClassifierValidator(cfg, tmp, meta, tok_path, va_seqs, va_tt, encoder.pad_id, data.y_val, data.names,
                           batches.steps_per_epoch, rt.device, averaged)
    metrics = MetricsLogger(tmp / "metrics.jsonl", cfg.track, tmp, to_dict(cfg))
    try:
        result = finetune_loop(cfg, setup, batches, validator, rt, metrics, averaged)
        if not validator.history or validator.history[-1]["step"] != result.state.step:
            with torch.no_grad():
                validator(setup.model, result.state)  # the final state always gets a validation
    finally:
        metrics.close()
    if validator.best is None:
        raise BudgetError("no validation ran: the budget ended before the first step")
    st = result.state
    return FinetuneResult(
        run_dir=str(cfg.out), backbone="hf" if meta.kind == "hf-classifier" else "budgetlm", source=cfg.model,
        from_scratch=cfg.from_scratch, labels=data.names, train_examples=len(tr_seqs), val_examples=len(va_seqs),
        steps=st.step, epochs=round(st.step / batches.steps_per_epoch, 3), best_step=validator.best_step,
        early_stopped=result.stopped_early, interrupted=result.interrupted, train_seconds=round(st.elapsed_s, 2),
        wall_seconds=round(time.perf_counter() - t0, 2), metric=cfg.metric, history=validator.history,
        metrics=validator.best)


def settings_line(cfg: FinetuneConfig) -> str:
    return (f"lr {cfg.lr:g}, batch {cfg.batch_size}, max_len {cfg.max_len} (truncate {cfg.truncate}), warm-up "
            f"{cfg.warmup:g}, weight decay {cfg.weight_decay:g}, dropout {cfg.dropout:g}, patience {cfg.patience}"
            + (f", weights averaged (EMA decay {cfg.ema})" if cfg.ema else ""))


def _classify_task(cfg: FinetuneConfig):
    """(reads and checks the data, trains into a folder): the classification task."""
    data = _read_data(cfg)
    return lambda tmp: _train(cfg, data, tmp)


TASKS = {"classify": _classify_task}  # --task -> (checks the data, returns the trainer); api adds "qa"


def finetune(cfg: FinetuneConfig, tasks: dict | None = None) -> FinetuneResult:
    """Fine-tune `cfg.model` for `cfg.task` on `cfg.train`; see the module docstring. `tasks`: the
    task registry (default: classification; `budgetlm.api.finetune` passes every task)."""
    from budgetlm.training.report import finetuning_report

    check_config(cfg)
    tasks = tasks or TASKS
    if cfg.task not in tasks:
        raise BudgetError(f"--task {cfg.task}: fine-tune it through budgetlm.api.finetune (tasks here: {', '.join(tasks)})")
    cfg = replace(cfg)  # the sources fill in max_len; the caller's config stays as it was
    trainer = tasks[cfg.task](cfg)
    fsio.remove_dead_temps(cfg.out)  # what a crashed earlier run left next to --out
    with fsio.atomic_dir(cfg.out, replace=Path(cfg.out).exists()) as tmp:
        fsio.write_marker(tmp, "finetune")
        result = trainer(tmp)
        fsio.atomic_write_json(tmp / "metrics.json", result.to_json())
        finetuning_report(tmp, {**result.to_json(), "run_dir": cfg.out}, settings_line(cfg))
    return result
