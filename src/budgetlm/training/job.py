"""The job a training run does: `TrainConfig` (what the user asked), its checks, the model chosen
for it (a preset, a source checkpoint, or the planner's compute-optimal shape) and `RunResult`
(what the run reports). `train.pretrain` runs it.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from budgetlm import fsio, runtime, ui
from budgetlm.config import BudgetError, check_ranges, parse_duration, ranged, to_dict
from budgetlm.data.shards import Dataset
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import heads_for, model_config
from budgetlm.planning import DEFAULT_SEQ_LEN, Plan
from budgetlm.training import checkpoint as ck
from budgetlm.training.schedule import ScheduleConfig


@dataclass
class TrainConfig:
    data: str = ""  # prepared dataset folder (written by `budgetlm prepare`)
    out: str = ""  # run directory to create (or to continue with --resume)
    objective: Literal["causal", "masked"] = "causal"  # next-token LM (GPT) or masked LM (BERT)
    budget: str = ""  # wall-clock training budget, e.g. 90s, 10m, 2h, 1d (eval/checkpoint time excluded)
    max_steps: int = ranged(0, 0, 10**12)  # stop after this many optimizer steps (0 = no step limit)
    max_tokens: int = ranged(0, 0, 10**15)  # stop after this many training tokens (0 = no token limit)
    model: str = "auto"  # auto (sized for the budget), a preset (tiny, mini, small, ...) or a depth
    n_embd: int = ranged(0, 32, 65536, also=(0,))  # model width in channels (0 = derived from the depth)
    seq_len: int = ranged(0, 8, 1 << 20, also=(0,))  # context length in tokens (0 = auto: 256 causal, 128 masked)
    batch_size: int = ranged(0, 1, 1 << 24, also=(0,))  # global batch in sequences per optimizer step (0 = auto)
    micro_batch: int = ranged(0, 1, 1 << 24, also=(0,))  # sequences per forward pass on each device (0 = the whole batch)
    optimizer: Literal["adamw", "muon"] = "muon"  # muon (hidden matrices) + AdamW (the rest), or plain adamw
    lr: float = ranged(0.0, 0.0, 10.0)  # peak learning rate (0 = auto: 1e-2 with muon, 3e-3 with adamw)
    weight_decay: float = ranged(-1.0, 0.0, 10.0, also=(-1.0,))  # decoupled weight decay on matrices (-1 = auto: 0.3 for planned muon runs that see the data 4+ times without dropout, else 0.1)
    warmup: float = ranged(0.02, 0.0, 0.99)  # fraction of the budget spent on linear LR warm-up
    decay: Literal["wsd", "linear", "cosine", "constant"] = "wsd"  # LR shape after warm-up
    cooldown: float = ranged(-1.0, 0.0, 1.0, also=(-1.0,))  # wsd: final fraction of the budget spent decaying the LR to 0 (-1 = auto: 0.6 for planned runs that repeat the data 20+ times, else 0.4)
    grad_clip: float = ranged(1.0, 0.0, 1e6)  # clip the gradient norm to this (0 = off)
    ema: float = ranged(-1.0, 0.0, 0.99999, also=(-1.0,))  # per-step decay of a moving average of the weights over the cool-down, which the run ends with (0.995 ~ the last 200 steps; -1 = auto: a fifth of the cool-down's steps for planned muon runs that see the data 4+ times, else 0 = off)
    dropout: float = ranged(-1.0, 0.0, 0.95, also=(-1.0,))  # residual dropout (-1 = auto: 0.2 for planned runs that repeat the data 20+ times, else none, as Cramming)
    input_noise: float = ranged(-1.0, 0.0, 0.9, also=(-1.0,))  # causal: fraction of input tokens replaced by tokens drawn from the data, targets unchanged (-1 = auto: 0.05 for planned causal runs that repeat the data 20+ times, else 0)
    mask_rate: float = ranged(0.25, 0.0, 0.95, above=True)  # masked objective: fraction of tokens to predict (Cramming: 25%)
    sampling: Literal["random", "sequential"] = "random"  # random windows or one pass in order
    device: str = "auto"  # auto | cpu | cuda | mps | xla
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto measures bf16 speed on CPU)
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile (auto: on for CUDA, and on CPU for budgets of 5m or more)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state across ranks (FSDP2) instead of DDP
    seed: int = ranged(0, 0, 2**63 - 1)  # random seed (weights, data order, masking)
    eval_every: float = ranged(0.25, 0.0, 1.0)  # evaluate every this fraction of the budget (0 = only at the end)
    eval_tokens: int = ranged(65536, 2, 10**12)  # val tokens used by the periodic evaluations (the final one uses all)
    checkpoint_every: str = "10m"  # real time between periodic checkpoints
    checkpoint_every_steps: int = ranged(0, 0, 10**12)  # also checkpoint every N optimizer steps (0 = off)
    keep_last: int = ranged(2, 1, 10**6)  # periodic checkpoints kept (the best one is always kept)
    log_every: int = ranged(10, 1, 10**9)  # optimizer steps between metric lines
    progress_every: float = ranged(30.0, 0.1, 86400.0)  # seconds between progress lines when the output is a log, not a terminal
    track: list[str] = field(default_factory=list)  # experiment trackers to log to: tensorboard, wandb, mlflow (each an optional extra)
    resume: bool = False  # continue the run in --out from its latest checkpoint
    init_from: str = ""  # start from the weights of this run or local Hugging Face Llama folder (continued pre-training: new data, fresh optimizer and schedule)

    def __post_init__(self) -> None:
        check_ranges(self)
        if self.objective == "masked" and self.input_noise > 0:
            raise BudgetError("--input-noise is for the causal objective: the masked objective corrupts its inputs itself")
        if self.n_embd % 32:
            raise BudgetError(f"--n-embd must be a multiple of 32 (heads of 32 or 64 channels), got {self.n_embd}")


# Settings that may change when a run is resumed; the others are the saved run's.
RESUME_OVERRIDES = ("budget", "max_steps", "max_tokens", "data", "device", "precision", "compile",
                    "activation_checkpointing", "checkpoint_every", "checkpoint_every_steps", "keep_last",
                    "log_every", "eval_every", "progress_every")
# Peak LR per optimizer, tuned on Tiny Shakespeare (4 layers x 256, 4,096-token batches): muon at 1e-2
# beat 3e-3 (docs/bench/training.md); AdamW's 3e-3 is the usual choice for models this small.
AUTO_LR = {"muon": 1e-2, "adamw": 3e-3}
# Sequences per optimizer step when a preset, a depth or --init-from gives the model (the planner
# sizes the batch itself): 16 x 256 causal tokens, 64 x 128 masked ones.
FIXED_MODEL_BATCH = {"causal": 16, "masked": 64}
# Without --budget (only --max-steps/--max-tokens) the planner sizes the model as for this long.
PLAN_BUDGET_WITHOUT_CLOCK_S = 600.0
# Repeated data loses value after a few epochs (Muennighoff et al. 2023) and small corpora overfit:
# runs planned to see the data DROPOUT_EPOCHS times or more get residual dropout. On 10-minute Tiny
# Shakespeare runs (~20 epochs) 0.2 beat 0.1 and 0.3; below 20 epochs it hurt (docs/bench/training.md).
# Muennighoff's R*_D = 15.4 puts the point where repeats lose most of their value in the same place.
DROPOUT_EPOCHS = 20.0
AUTO_DROPOUT = 0.2
# Data noising (Xie et al. 2017, unigram noising): in planned causal runs that repeat their data
# DROPOUT_EPOCHS+ times, a fraction of the input tokens is also replaced by tokens drawn from the data.
# On Tiny Shakespeare at ~47 passes (6 x 96, dropout 0.2, equal tokens) 0.05 ended below every run
# without it under two seeds (mean 2.0213 against 2.0436 bits/byte); 0.1 was level, 0.2 worse
# (docs/bench/training.md).
AUTO_INPUT_NOISE = 0.05
# Weight decay: 0.1 (GPT-3, nanoGPT), and more for planned muon runs that repeat their data without
# dropout. Repeats beyond ~4 epochs are worth less than new data (Muennighoff et al. 2023) and more
# weight decay is the regulariser that pays there (Kim et al. 2025, "Pre-training under infinite
# compute"). 2-minute Tiny Shakespeare runs (12 epochs, no dropout) ended 0.02-0.03 bits/byte lower at
# 0.25-0.4 than at 0.1 or 1.0; 8-minute Gutenberg runs (1.2 epochs) and 10-minute Tiny Shakespeare runs
# (20 epochs, dropout 0.2) did not gain (docs/bench/training.md).
WEIGHT_DECAY = 0.1
REPEAT_EPOCHS = 4.0
REPEAT_WEIGHT_DECAY = 0.3
# Planned muon runs that repeat their data 4+ times, with dropout or without, end on an exponential
# moving average of their cool-down's weights: averaging the iterates as the LR decays (Polyak &
# Juditsky 1992; LAWA, Kaddour 2022). Its time constant is a fifth of the planned cool-down's steps (decay 1 - 5 / steps): on Tiny Shakespeare at equal tokens, 0.995
# over a ~1,000-step cool-down and 0.986 over a ~300-step one gained 0.006-0.021 bits/byte, where 0.995
# over the short one lost and 0.998 over the long one gained less; with dropout 0.2 at 10 minutes
# (~37 epochs) it gained 0.007-0.010 in two seeds. It lost on an 8-minute Gutenberg run (under one
# epoch) (docs/bench/training.md).
EMA_PER_COOLDOWN = 5.0  # cool-down steps per time constant of the average
# The WSD cool-down: 0.4 of the budget (Hägele et al. 2024 find a 20% cool-down matches a cosine
# schedule), and 0.6 where the data repeats DROPOUT_EPOCHS+ times. On Tiny Shakespeare at ~47 passes
# (6 x 96, dropout 0.2, the weight average) the two are level: first runs of 0.6 ended 0.010 / 0.007
# below 0.4 in two seeds at equal tokens, but repeated runs of one seed spread by 0.017, and 10-minute
# runs averaged 2.0405 against 2.0414 (docs/bench/training.md).
COOLDOWN = ScheduleConfig.cooldown  # the schedule's own default (0.4)
REPEAT_COOLDOWN = 0.6


def ema_for_steps(steps: float) -> float:
    """The automatic --ema for a cool-down of `steps` optimizer steps: a time constant of a fifth of them."""
    return min(round(1.0 - EMA_PER_COOLDOWN / steps, 5), 0.99999) if steps > 2 * EMA_PER_COOLDOWN else 0.0


def ema_decay(plan: Plan, cooldown: float) -> float:
    """The automatic --ema of a planned run, from its planned cool-down steps. The run sets it again from
    its own pace when the cool-down starts (`pretrain`): a plan that misjudged the speed misjudges the steps."""
    return ema_for_steps(cooldown * plan.tokens / max(plan.global_batch_tokens, 1))


@dataclass
class RunResult:
    """What a training run reports (also RUN/summary.json)."""

    run_dir: str  # the run folder
    objective: str  # causal | masked
    steps: int  # optimizer steps taken
    tokens: int  # training tokens consumed (all ranks)
    elapsed_s: float  # training seconds (the budget clock)
    train_loss: float  # training loss, mean of the last max(10, log_every) steps (one step is noisy)
    val_loss: float | None  # validation loss of the final evaluation (whole val split)
    params: int  # model parameters
    model: str  # one-line description of the model
    precision: str  # fp32 | bf16 | fp16, as used
    compiled: bool  # torch.compile was used
    device: str  # cpu | cuda | mps | xla
    world_size: int  # processes
    parallel: str  # none | ddp | fsdp
    nan_skipped: int  # steps skipped for a non-finite loss or gradient
    rollbacks: int  # returns to a checkpoint after divergence
    interrupted: bool  # stopped by a signal (resume with resume=True)
    tokens_per_s: float  # achieved training throughput
    val_bpb: float | None = None  # bits per UTF-8 byte on the val split (causal)
    val_accuracy: float | None = None  # masked-token accuracy (masked)
    mfu: float | None = None  # model FLOPs utilisation against the device's peak
    peak_flops_note: str = ""  # what the MFU is measured against
    planned_tokens_per_s: float | None = None  # what the plan predicted (planned runs)
    plan_correction: str = ""  # set when the achieved speed was far from the plan's and corrected it
    ema: float | None = None  # decay of the weight average the run ended with (--ema, or the one set from its pace)

    def to_json(self) -> dict[str, Any]:
        """summary.json: optional figures that do not apply (bits/byte of a masked model) are left out."""
        optional = {f.name for f in dataclasses.fields(self) if f.default is not dataclasses.MISSING}
        return {k: v for k, v in to_dict(self).items() if not (k in optional and v in (None, ""))}


# --------------------------------------------------------------------------------------------------
# the config


def resolve_config(cfg: TrainConfig, given: dict[str, Any] | None = None) -> TrainConfig:
    """Check `cfg` before anything is written. With `resume`, the saved run's config, with the
    RESUME_OVERRIDES the caller gave (`given`: the settings given explicitly; default: those that
    differ from TrainConfig's defaults)."""
    if not cfg.out:
        raise BudgetError("give --out RUN: the run directory to write")
    out = Path(cfg.out)
    if cfg.init_from and cfg.resume:
        raise BudgetError("--init-from starts a new run from another run's weights; --resume continues this one: pick one")
    made_by = fsio.read_marker(out) or ("train" if (out / "config.json").is_file() else None)
    restart = out.is_dir() and made_by == "train" and not ck.list_checkpoints(out)
    if cfg.resume and restart:
        ui.warn(f"{out} has no checkpoint yet (its run stopped before the first one): starting it again")
        cfg = dataclasses.replace(cfg, resume=False)
    elif cfg.resume:
        cfg = _resumed(cfg, given)
    try:
        fsio.check_output(out, [cfg.data, cfg.init_from], "train", continuing=cfg.resume or restart, made_by=made_by)
    except BudgetError as e:
        raise BudgetError(f"{e}; to continue a run pass --resume" if out.is_dir() and not cfg.resume else str(e)) from None
    if not cfg.data:
        raise BudgetError("give --data DIR: a dataset folder written by `budgetlm prepare`")
    if not (cfg.budget or cfg.max_steps or cfg.max_tokens):
        raise BudgetError("give a budget: --budget DURATION (e.g. 10m), --max-steps N or --max-tokens N")
    from budgetlm.training.track import check_trackers

    check_trackers(cfg.track)
    if cfg.budget:
        parse_duration(cfg.budget)  # validate early, one clear line
    parse_duration(cfg.checkpoint_every)
    return cfg


def _resumed(cfg: TrainConfig, given: dict[str, Any] | None) -> TrainConfig:
    from budgetlm.config import from_dict, load_config_file

    saved = Path(cfg.out) / "config.json"
    if not saved.is_file():
        raise BudgetError(f"cannot resume: {cfg.out} holds no run (no config.json); start it without --resume")
    old = from_dict(TrainConfig, load_config_file(saved, TrainConfig))
    if given is None:
        defaults = TrainConfig()
        given = {k: getattr(cfg, k) for k in RESUME_OVERRIDES if getattr(cfg, k) != getattr(defaults, k)}
    changes = {k: v for k, v in given.items() if k in RESUME_OVERRIDES}
    return dataclasses.replace(old, **changes, resume=True, out=cfg.out, init_from="")


# --------------------------------------------------------------------------------------------------
# choosing the model


@dataclass
class ModelChoice:
    """The model a run trains and the settings chosen with it."""

    model: ModelConfig  # the shape trained
    cfg: TrainConfig  # the run config with automatic choices filled in
    reason: str  # one line: where the model came from
    source: ck.CheckpointMeta | None = None  # the checkpoint whose weights it starts from
    plan: Plan | None = None  # the planner's plan, for planned runs
    auto_ema: bool = False  # the weight average's decay is budgetlm's choice (set again from the run's pace)


def _planned(cfg: TrainConfig, data: Dataset, budget_s: float | None, T: int, rt) -> ModelChoice:
    """The compute-optimal model for the budget and the data on this device (rank 0 plans; every
    rank trains rank 0's plan)."""
    from budgetlm.training.calibrate import auto_plan

    train_tokens = len(data.tokens("train"))
    plan = None
    if rt.is_main:
        compiles, _ = runtime.compile_wanted(rt, cfg.compile, budget_s)
        args = (budget_s or PLAN_BUDGET_WITHOUT_CLOCK_S, train_tokens, T, rt, cfg.objective, data.vocab_size,
                cfg.optimizer, compiles)
        plan = auto_plan(*args)
        if cfg.dropout < 0 and plan.tokens / max(train_tokens, 1) >= DROPOUT_EPOCHS:
            # dropout costs time at these sizes: plan again from steps measured with it
            plan = auto_plan(*args, dropout=AUTO_DROPOUT)
            plan.notes.append(f"planned with dropout {AUTO_DROPOUT:g}: the data repeats {DROPOUT_EPOCHS:g}+ times")
    plan = runtime.broadcast_object(rt, plan)
    epochs = plan.tokens / max(train_tokens, 1)
    with_dropout = any(n.startswith("planned with dropout") for n in plan.notes)
    many = with_dropout or epochs >= DROPOUT_EPOCHS  # the data repeats 20+ times: dropout, a longer cool-down
    fill: dict[str, Any] = {"batch_size": plan.global_batch_tokens // T, "micro_batch": plan.micro_batch,
                            "activation_checkpointing": bool(plan.activation_checkpointing),
                            "dropout": AUTO_DROPOUT if many else 0.0}
    m = plan.model
    reason = (f"planned: {m.n_layer} layers x {m.n_embd} wide is the compute-optimal size for "
              f"~{plan.tokens / 1e6:.1f}M tokens ({epochs:.1f} epochs) at {plan.tokens_per_second:,.0f} "
              f"tokens/s ({plan.mfu_source} MFU {plan.mfu:.2f})")
    if cfg.batch_size:
        fill.pop("micro_batch")  # the planned micro-batch was for the planned batch
    defaults = TrainConfig()
    fill = {k: v for k, v in fill.items() if getattr(cfg, k) == getattr(defaults, k)}  # the user's flags win
    if fill.get("dropout"):
        # with dropout the planner may pick a larger model that repeats the data fewer times
        why = (f">= {DROPOUT_EPOCHS:g} epochs" if epochs >= DROPOUT_EPOCHS
               else f"the plan without it repeats the data {DROPOUT_EPOCHS:g}+ times")
        reason += f"; dropout {fill['dropout']:g} ({why})"
    c = dataclasses.replace(cfg, **fill)
    if c.cooldown < 0:
        c = dataclasses.replace(c, cooldown=REPEAT_COOLDOWN if many else COOLDOWN)
        reason += f"; cool-down {REPEAT_COOLDOWN:g} (the data repeats {DROPOUT_EPOCHS:g}+ times)" if many else ""
    if c.input_noise < 0 and many and c.objective == "causal":
        c = dataclasses.replace(c, input_noise=AUTO_INPUT_NOISE)
        reason += f"; input noise {AUTO_INPUT_NOISE:g}"
    repeats = c.optimizer == "muon" and epochs >= REPEAT_EPOCHS  # the average; weight decay 0.3 without dropout
    if c.weight_decay < 0 and repeats and c.dropout == 0:
        c = dataclasses.replace(c, weight_decay=REPEAT_WEIGHT_DECAY)
        reason += f"; weight decay {REPEAT_WEIGHT_DECAY:g} (>= {REPEAT_EPOCHS:g} epochs, no dropout)"
    auto_ema = c.ema < 0 and repeats and not c.fsdp
    if auto_ema:
        c = dataclasses.replace(c, ema=ema_decay(plan, c.cooldown))
        reason += f"; weight average {c.ema:g} over the cool-down" if c.ema else ""
    return ModelChoice(m, c, "auto: " + reason, plan=plan, auto_ema=auto_ema and c.ema > 0)


def _source(path: str, cfg: TrainConfig, data: Dataset) -> ck.CheckpointMeta:
    """The checkpoint a run continues (--resume) or starts from (--init-from), checked against the data."""
    meta = ck.load_meta(path)
    if meta.kind != "lm":
        raise BudgetError(f"{path} holds a fine-tuned classifier, not a language model")
    if meta.causal != (cfg.objective == "causal"):
        kind = "causal" if meta.causal else "masked"
        raise BudgetError(f"{path} is a {kind} model: pass --objective {kind}")
    want = int(meta.model_config.get("vocab_size", 0))
    if meta.origin == "hf":  # the folder's tokenizer, maybe with prepare's special tokens appended
        from budgetlm.hfmodels import check_tokenizer_extends, read_folder

        check_tokenizer_extends(data.tokenizer_path, read_folder(meta.path), str(data.path))
        return meta
    if data.vocab_size != want:
        raise BudgetError(f"the tokenizer of {data.path} has {data.vocab_size} tokens but the checkpoint's model "
                          f"expects {want}: the data was prepared with a different tokenizer")
    a, b = data.tokenizer_path, Path(meta.tokenizer_path or "/nonexistent")
    if a.is_file() and b.is_file() and a.read_bytes() != b.read_bytes():
        raise BudgetError(f"the tokenizer of {data.path} differs from the one the checkpoint was trained with")
    return meta


def choose_model(cfg: TrainConfig, data: Dataset, budget_s: float | None, rt) -> ModelChoice:
    """The model of this run and the run config with the automatic choices filled in."""
    from budgetlm.models.kinds import model_config_from

    T = cfg.seq_len or DEFAULT_SEQ_LEN[cfg.objective]
    if cfg.resume:
        meta = _source(cfg.out, cfg, data)
        choice = ModelChoice(model_config_from(meta.model_config), cfg, f"resumed from {Path(meta.path).name}", meta)
    elif cfg.init_from:
        # RoPE has no learned positions: --seq-len may change the context of the source model
        meta = _source(cfg.init_from, cfg, data)
        mcfg = model_config_from(meta.model_config)
        reason = f"weights from {meta.path}"
        if data.vocab_size > mcfg.vocab_size:  # only a Hugging Face folder's tokenizer may have grown (_source)
            reason += f"; {data.vocab_size - mcfg.vocab_size} embedding rows added for the tokens prepare added"
            mcfg = dataclasses.replace(mcfg, vocab_size=data.vocab_size)
        cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size or FIXED_MODEL_BATCH[cfg.objective],
                                  seq_len=cfg.seq_len or mcfg.max_seq_len, dropout=max(cfg.dropout, 0.0))
        choice = ModelChoice(mcfg, cfg, reason, meta)
    elif cfg.model == "auto":
        choice = _planned(cfg, data, budget_s, T, rt)
    else:
        try:
            mcfg = model_config(cfg.model, data.vocab_size, causal=cfg.objective == "causal", max_seq_len=T)
        except ValueError as e:
            raise BudgetError(str(e)) from None
        choice = ModelChoice(mcfg, dataclasses.replace(cfg, batch_size=cfg.batch_size or FIXED_MODEL_BATCH[cfg.objective]),
                             f"--model {cfg.model}")
    c = choice.cfg
    c = dataclasses.replace(c, lr=c.lr or AUTO_LR[c.optimizer], seq_len=c.seq_len or T, dropout=max(c.dropout, 0.0),
                            weight_decay=WEIGHT_DECAY if c.weight_decay < 0 else c.weight_decay, ema=max(c.ema, 0.0),
                            input_noise=max(c.input_noise, 0.0),
                            cooldown=COOLDOWN if c.cooldown < 0 else c.cooldown)
    mcfg = choice.model
    if c.n_embd and not (cfg.resume or cfg.init_from) and c.n_embd != mcfg.n_embd:
        mcfg = dataclasses.replace(mcfg, n_embd=c.n_embd, n_head=heads_for(c.n_embd))
    mcfg = dataclasses.replace(mcfg, max_seq_len=c.seq_len, dropout=c.dropout)
    # the resolved shape, so that config.json re-runs the same job
    c = dataclasses.replace(c, model=str(mcfg.n_layer), n_embd=mcfg.n_embd)
    return dataclasses.replace(choice, model=mcfg, cfg=c)
