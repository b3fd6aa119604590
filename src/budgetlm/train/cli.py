"""`budgetlm train --data DIR --out RUN [--objective causal|masked] [--budget DURATION]`.

Wires the pieces together: dataset + tokenizer -> model config (explicit, or the planner's plan for the
budget) -> runtime (device, precision, DDP) -> optimizer, schedule, loader -> `train.loop` with
evaluation and checkpoint hooks -> final evaluation on the whole val split, final checkpoint,
RUN/report.md with a loss curve. `--resume` continues a run with its budget accounting intact.

Run directory: config.json (the resolved run config), metrics.jsonl, checkpoints/, report.md,
loss.png, summary.json. Nothing is written before the first optimizer step has succeeded, and an
existing run is never overwritten without --resume.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import math
import os
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from budgetlm import ui
from budgetlm.config import (
    BudgetError,
    add_dataclass_args,
    format_duration,
    from_args,
    from_dict,
    parse_duration,
    to_dict,
    write_json_atomic,
)
from budgetlm.models.config import ModelConfig


@dataclass
class TrainConfig:
    data: str = ""  # prepared dataset folder (written by `budgetlm prepare`)
    out: str = ""  # run directory to create (or to continue with --resume)
    objective: Literal["causal", "masked"] = "causal"  # next-token LM (GPT) or masked LM (BERT)
    budget: str = ""  # wall-clock training budget, e.g. 90s, 10m, 2h, 1d (eval/checkpoint time excluded)
    max_steps: int = 0  # stop after this many optimizer steps (0 = no step limit)
    max_tokens: int = 0  # stop after this many training tokens (0 = no token limit)
    model: str = "auto"  # auto (sized for the budget), a preset (tiny, mini, small, ...) or a depth
    n_embd: int = 0  # model width override (0 = derived from the depth)
    seq_len: int = 0  # context length in tokens (0 = auto)
    batch_size: int = 0  # global batch in sequences per optimizer step (0 = auto)
    micro_batch: int = 0  # sequences per forward pass on each device (0 = the whole batch)
    optimizer: Literal["adamw", "muon"] = "muon"  # muon (hidden matrices) + AdamW (the rest), or plain adamw
    lr: float = 0.0  # peak learning rate (0 = auto: 1e-2 with muon, 3e-3 with adamw)
    weight_decay: float = 0.1  # decoupled weight decay on matrices
    warmup: float = 0.02  # fraction of the budget spent on linear LR warm-up
    decay: Literal["wsd", "linear", "cosine", "constant"] = "wsd"  # LR shape after warm-up
    cooldown: float = 0.4  # wsd: final fraction of the budget spent decaying the LR to 0
    grad_clip: float = 1.0  # clip the gradient norm to this (0 = off)
    dropout: float = -1.0  # residual dropout (-1 = auto: 0.2 for planned runs that repeat the data 20+ times, else none, as Cramming)
    mask_rate: float = 0.25  # masked objective: fraction of tokens to predict (Cramming: 25%)
    sampling: Literal["random", "sequential"] = "random"  # random windows or one pass in order
    device: str = "auto"  # auto | cpu | cuda | mps | xla
    precision: str = "auto"  # auto | fp32 | bf16 | fp16 (auto measures bf16 speed on CPU)
    compile: Literal["auto", "on", "off"] = "auto"  # torch.compile (auto: on for CUDA, and on CPU for budgets of 5m or more)
    activation_checkpointing: bool = False  # recompute each block in backward: less memory, ~1/3 more compute
    fsdp: bool = False  # under torchrun: shard weights, gradients and optimizer state across ranks (FSDP2) instead of DDP
    seed: int = 0  # random seed (weights, data order, masking)
    eval_every: float = 0.25  # evaluate every this fraction of the budget (0 = only at the end)
    eval_tokens: int = 65536  # val tokens used by the periodic evaluations (the final one uses all)
    checkpoint_every: str = "10m"  # real time between periodic checkpoints
    checkpoint_every_steps: int = 0  # also checkpoint every N optimizer steps (0 = off)
    keep_last: int = 2  # periodic checkpoints kept (the best one is always kept)
    log_every: int = 10  # optimizer steps between metric lines
    resume: bool = False  # continue the run in --out from its latest checkpoint
    init_from: str = ""  # start from the weights of this run (continued pre-training: new data, fresh optimizer and schedule)


# Flags whose new value wins over the saved run config on --resume.
RESUME_OVERRIDES = ("budget", "max_steps", "max_tokens", "data", "device", "precision", "compile",
                    "activation_checkpointing",
                    "checkpoint_every", "checkpoint_every_steps", "keep_last", "log_every", "eval_every")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_dataclass_args(parser, TrainConfig)


# --------------------------------------------------------------------------------------------------
# automatic sizing: the planner (issue 4) on a calibration of this device


# Peak LR per optimizer, tuned on Tiny Shakespeare (4 layers x 256, 4,096-token batches): muon at 1e-2
# beat 3e-3 (docs/bench/training.md); AdamW's 3e-3 is the usual choice for models this small.
AUTO_LR = {"muon": 1e-2, "adamw": 3e-3}
# Sequences per optimizer step when a preset, a depth or --init-from gives the model (the planner
# sizes the batch itself): 16 x 256 causal tokens, 64 x 128 masked ones.
FIXED_MODEL_BATCH = {"causal": 16, "masked": 64}
# Without --budget (only --max-steps/--max-tokens) the planner sizes the model as for this long.
PLAN_BUDGET_WITHOUT_CLOCK_S = 600.0
# Repeated data loses value after a few epochs (Muennighoff et al. 2023) and small corpora overfit.
# Runs planned to see the data this many times get residual dropout. Measured on 10-minute Tiny
# Shakespeare runs (depth 3, ~20 epochs, docs/bench/training.md): dropout 0.1 -> 2.219 bits/byte
# (validation rose in the cool-down), 0.2 -> 2.123, 0.3 -> 2.152; nanoGPT's Shakespeare uses 0.2 too.
# Below 20 it hurts: the 2-minute plan (3 x 64, 13-16 planned epochs) reached 2.181 without dropout
# and 2.251 with 0.2 (docs/bench/planning.md). Muennighoff's R*_D = 15.4 puts the point where repeats
# lose most of their value in the same place.
DROPOUT_EPOCHS = 20.0
AUTO_DROPOUT = 0.2


@dataclass
class AutoChoice:
    model: ModelConfig
    batch_size: int  # global sequences per optimizer step
    micro_batch: int  # sequences per forward/backward on each device
    activation_checkpointing: bool
    dropout: float  # regularisation for runs that repeat the data many times
    reason: str
    plan: dict[str, Any]  # the planner's whole plan (budgetlm.plan.Plan.to_json())


def plan_model(objective: str, vocab_size: int, budget_s: float | None, train_tokens: int, seq_len: int,
               optimizer: str, rt) -> AutoChoice:
    """`budgetlm plan` for this run: calibrate this device (cached per device, precision and sequence
    length), choose the compute-optimal model for the budget and the data, and the micro-batch,
    accumulation and checkpointing that fit. Rank 0 plans; every rank trains rank 0's plan."""
    from budgetlm import runtime
    from budgetlm.bench import auto_configure

    plan = None
    if rt.is_main:
        p = auto_configure(budget_s or PLAN_BUDGET_WITHOUT_CLOCK_S, train_tokens, seq_len, objective, vocab_size,
                           rt.precision, rt.world_size, optimizer)
        plan = p.to_json()
    plan = runtime.broadcast_object(rt, plan)
    mcfg = from_dict(ModelConfig, plan["model"])
    epochs = plan["tokens"] / max(train_tokens, 1)
    dropout = AUTO_DROPOUT if epochs >= DROPOUT_EPOCHS else 0.0
    sizing = plan.get("sizing", {})
    reason = (f"planned: {mcfg.n_layer} layers x {mcfg.n_embd} wide is the compute-optimal size ({sizing.get('law', 'scaling law')}) "
              f"for ~{plan['tokens'] / 1e6:.1f}M tokens ({epochs:.1f} epochs) at {plan['tokens_per_second']:,.0f} "
              f"tokens/s ({plan['mfu_source']} MFU {plan['mfu']:.2f})")
    if dropout:
        reason += f"; dropout {dropout:g} (>= {DROPOUT_EPOCHS:g} epochs)"
    return AutoChoice(mcfg, plan["global_batch_tokens"] // seq_len, plan["micro_batch"],
                      bool(plan["activation_checkpointing"]), dropout, reason, plan)


def show_plan(plan: dict[str, Any], budget_s: float | None) -> None:
    """The plan the run will follow, as `budgetlm plan` would print its key lines."""
    mem = plan["memory"]["total"]
    rows = [
        ["model", f"{plan['depth']} layers x {plan['model']['n_embd']} wide, {plan['params'] / 1e6:.2f}M params, seq {plan['seq_len']}"],
        ["tokens", f"{plan['tokens']:,}" + (f" ({plan['epochs']:.1f} epochs)" if plan.get("epochs") else "")],
        ["batch", f"{plan['global_batch_tokens']:,} tokens/step = micro {plan['micro_batch']} x accumulation "
                  f"{plan['grad_accum']} x {plan['num_devices']} device(s)"],
        ["precision", f"{plan['precision']}, activation checkpointing {'on' if plan['activation_checkpointing'] else 'off'}"],
        ["memory", f"{mem / 2**20:,.0f} MiB of {plan['device_memory_bytes'] / 2**30:,.1f} GiB"],
        ["speed", f"{plan['tokens_per_second']:,.0f} tokens/s, MFU {plan['mfu']:.2f} ({plan['mfu_source']})"],
        ["time", format_duration(budget_s or plan["seconds"])],
    ]
    rows += [["note", n] for n in plan.get("notes", [])]
    ui.table(f"plan on {plan['device']}", ["", "value"], rows)


# --------------------------------------------------------------------------------------------------
# helpers


def _resolve_config(args: argparse.Namespace) -> TrainConfig:
    cfg = from_args(TrainConfig, args)
    if not cfg.out:
        raise BudgetError("give --out RUN: the run directory to write")
    out = Path(cfg.out)
    if cfg.init_from and cfg.resume:
        raise BudgetError("--init-from starts a new run from another run's weights; --resume continues this one: pick one")
    if cfg.resume:
        saved = out / "config.json"
        if not saved.is_file():
            raise BudgetError(f"cannot resume: {out} holds no run (no config.json); start it without --resume")
        import json

        try:
            old = from_dict(TrainConfig, json.loads(saved.read_text()))
        except (OSError, ValueError, TypeError) as e:
            raise BudgetError(f"cannot resume: {saved} is unreadable ({e})") from None
        defaults = TrainConfig()
        changes = {k: getattr(cfg, k) for k in RESUME_OVERRIDES if getattr(cfg, k) != getattr(defaults, k)}
        cfg = dataclasses.replace(old, **changes, resume=True, out=cfg.out)
    else:
        if out.exists() and any(out.iterdir()):
            raise BudgetError(f"{out} already exists and is not empty: pass --resume to continue it, or choose another --out")
    if not cfg.data:
        raise BudgetError("give --data DIR: a dataset folder written by `budgetlm prepare`")
    if not (cfg.budget or cfg.max_steps or cfg.max_tokens):
        raise BudgetError("give a budget: --budget DURATION (e.g. 10m), --max-steps N or --max-tokens N")
    if not (cfg.dropout == -1 or 0 <= cfg.dropout < 1):
        raise BudgetError(f"--dropout must be in [0, 1) (or -1 for auto), got {cfg.dropout:g}")
    if cfg.budget:
        parse_duration(cfg.budget)  # validate early, one clear line
    parse_duration(cfg.checkpoint_every)
    return cfg


def _model_config(cfg: TrainConfig, vocab_size: int, budget_s, train_tokens: int, rt) -> tuple[TrainConfig, ModelConfig, str]:
    """The model, and the run config with the automatic choices (batch, micro-batch, lr, dropout,
    checkpointing) filled in where the user left them at 0/auto."""
    from budgetlm.models.presets import heads_for, model_config

    causal = cfg.objective == "causal"
    T = cfg.seq_len or (256 if causal else 128)
    fill: dict[str, Any] = {}
    if cfg.model == "auto":
        choice = plan_model(cfg.objective, vocab_size, budget_s, train_tokens, T, cfg.optimizer, rt)
        if rt.is_main:
            show_plan(choice.plan, budget_s)
        mcfg, reason = choice.model, "auto: " + choice.reason
        fill = {"batch_size": choice.batch_size, "micro_batch": choice.micro_batch, "dropout": choice.dropout,
                "activation_checkpointing": choice.activation_checkpointing}
    else:
        try:
            mcfg = model_config(cfg.model, vocab_size, causal=causal, max_seq_len=T)
        except ValueError as e:
            raise BudgetError(str(e)) from None
        fill, reason = {"batch_size": FIXED_MODEL_BATCH[cfg.objective]}, f"--model {cfg.model}"
    # a flag the user gave wins over the automatic choice
    defaults = TrainConfig()
    if cfg.batch_size:
        fill.pop("micro_batch", None)  # the planned micro-batch was for the planned batch
    fill = {k: v for k, v in fill.items() if getattr(cfg, k) == getattr(defaults, k)}
    cfg = dataclasses.replace(cfg, **fill, lr=cfg.lr or AUTO_LR[cfg.optimizer], seq_len=T)
    if cfg.dropout < 0:  # auto, and no plan chose a rate
        cfg = dataclasses.replace(cfg, dropout=0.0)
    if cfg.n_embd:
        mcfg = dataclasses.replace(mcfg, n_embd=cfg.n_embd, n_head=heads_for(cfg.n_embd))
    mcfg = dataclasses.replace(mcfg, max_seq_len=T, dropout=cfg.dropout)
    return cfg, mcfg, reason


def _check_tokenizer_matches(data_dir: Path, ckpt: Path, vocab: int, model_vocab: int) -> None:
    if vocab != model_vocab:
        raise BudgetError(
            f"the tokenizer of {data_dir} has {vocab} tokens but the checkpoint's model expects "
            f"{model_vocab}: the data was prepared with a different tokenizer"
        )
    a, b = data_dir / "tokenizer.json", ckpt / "tokenizer.json"
    if a.is_file() and b.is_file() and a.read_bytes() != b.read_bytes():
        raise BudgetError(f"the tokenizer of {data_dir} differs from the one the checkpoint was trained with")


def _init_source(cfg: TrainConfig, data_dir: Path, vocab: int) -> tuple[Path, ModelConfig]:
    """--init-from: the checkpoint to start from and its model, whose shape wins over --model and
    --n-embd (--seq-len may change the context: RoPE has no learned positions). Domain- and
    task-adaptive pre-training (Gururangan et al. 2020) continue a model on new text this way."""
    from budgetlm.train import checkpoint as ck

    ckpt = ck.resolve_checkpoint(cfg.init_from)  # the latest, as finetune and export load
    meta = ck.read_meta(ckpt)
    if meta.get("model_kind", "lm") != "lm":
        raise BudgetError(f"--init-from {cfg.init_from} is a fine-tuned {meta['model_kind']}, not a language model")
    mcfg = from_dict(ModelConfig, meta["model_config"])
    if mcfg.causal != (cfg.objective == "causal"):
        kind = "causal" if mcfg.causal else "masked"
        raise BudgetError(f"--init-from {cfg.init_from} is a {kind} model: pass --objective {kind}")
    _check_tokenizer_matches(data_dir, ckpt, vocab, mcfg.vocab_size)
    if cfg.seq_len and cfg.seq_len != mcfg.max_seq_len:
        mcfg = dataclasses.replace(mcfg, max_seq_len=cfg.seq_len)
    return ckpt, mcfg


def _fault_hook(step: int) -> None:
    """Fault injection for the crash tests: BUDGETLM_FAULT_KILL_AFTER_STEP=N SIGKILLs the process
    right after the checkpoint of step N is on disk (a power cut, as far as the run can tell)."""
    want = os.environ.get("BUDGETLM_FAULT_KILL_AFTER_STEP")
    if want and int(want) == step:
        os.kill(os.getpid(), signal.SIGKILL)


# --------------------------------------------------------------------------------------------------
# the command


def run(args: argparse.Namespace) -> dict[str, Any]:

    from budgetlm import runtime
    from budgetlm.data.loader import MaskingCollator, MaskingConfig, TokenLoader
    from budgetlm.data.shards import open_tokens, read_manifest
    from budgetlm.data.tokenizer import load_tokenizer, special_ids
    from budgetlm.evaluate import bits_per_byte, causal_nll, masked_metrics
    from budgetlm.models.presets import describe, flops_per_token, num_params
    from budgetlm.models.transformer import build_model
    from budgetlm.train import checkpoint as ck
    from budgetlm.train.loop import LoopConfig, LoopState, MetricsLogger, graceful_stop, train_loop
    from budgetlm.train.optim import OptimConfig, build_optimizer
    from budgetlm.train.report import write_report
    from budgetlm.train.schedule import ScheduleConfig

    cfg = _resolve_config(args)
    out, data_dir = Path(cfg.out), Path(cfg.data)
    manifest = read_manifest(data_dir)
    tok_path = data_dir / "tokenizer.json"
    tok = load_tokenizer(tok_path)
    vocab = tok.get_vocab_size()
    ids = special_ids(tok)
    train_tokens = open_tokens(data_dir, "train")
    val_tokens = open_tokens(data_dir, "val")
    if len(train_tokens) == 0:
        raise BudgetError(f"{data_dir} has an empty train split")
    budget_s = parse_duration(cfg.budget) if cfg.budget else None

    rt = runtime.init_runtime(cfg.device, cfg.precision, cfg.seed)
    resume_ckpt = init_ckpt = None
    if cfg.resume:
        resume_ckpt = ck.resolve_checkpoint(out)
        meta = ck.read_meta(resume_ckpt)
        mcfg = from_dict(ModelConfig, meta["model_config"])
        _check_tokenizer_matches(data_dir, resume_ckpt, vocab, mcfg.vocab_size)
        batch_size, lr, reason = cfg.batch_size, cfg.lr, f"resumed from {resume_ckpt.name}"
    elif cfg.init_from:
        init_ckpt, mcfg = _init_source(cfg, data_dir, vocab)
        cfg = dataclasses.replace(cfg, batch_size=cfg.batch_size or FIXED_MODEL_BATCH[cfg.objective],
                                  lr=cfg.lr or AUTO_LR[cfg.optimizer], seq_len=mcfg.max_seq_len,
                                  dropout=max(cfg.dropout, 0.0))
        mcfg = dataclasses.replace(mcfg, dropout=cfg.dropout)
        batch_size, lr, reason = cfg.batch_size, cfg.lr, f"weights from {init_ckpt}"
    else:
        cfg, mcfg, reason = _model_config(cfg, vocab, budget_s, len(train_tokens), rt)
        batch_size, lr = cfg.batch_size, cfg.lr
    T = mcfg.max_seq_len
    world = rt.world_size
    if batch_size % world:
        raise BudgetError(f"--batch-size {batch_size} is not divisible by the {world} processes")
    per_rank = batch_size // world
    micro = min(cfg.micro_batch or per_rank, per_rank)
    if per_rank % micro:
        raise BudgetError(f"--micro-batch {micro} does not divide the per-device batch {per_rank}")
    accum = per_rank // micro

    fsdp = cfg.fsdp and rt.ddp
    if cfg.fsdp and not rt.ddp:
        ui.warn("--fsdp has no effect in a single process: launch with torchrun --nproc_per_node N")
    if fsdp and cfg.optimizer != "adamw":
        raise BudgetError("--fsdp needs --optimizer adamw: Muon orthogonalises whole matrices, which FSDP "
                          "splits across ranks")
    model = build_model(mcfg).to(rt.device)
    model.activation_checkpointing = cfg.activation_checkpointing
    if resume_ckpt or init_ckpt:
        ck.load_weights(model, resume_ckpt or init_ckpt, rt.device)  # full weights, before any sharding
    if fsdp:
        runtime.shard_model(model, rt)  # before the optimizer: it must see the sharded parameters
    optimizer = build_optimizer(cfg.optimizer, model, OptimConfig(lr=lr, weight_decay=cfg.weight_decay))
    collator = None
    if not mcfg.causal:
        collator = MaskingCollator(MaskingConfig(rate=cfg.mask_rate), ids["mask"], vocab,
                                   [v for k, v in ids.items() if k != "unk"])
    loader = TokenLoader(train_tokens, T, micro, seed=cfg.seed, mode=cfg.sampling, rank=rt.rank,
                         world_size=world, collator=collator)
    state = LoopState()
    if resume_ckpt is not None:
        saved = ck.load_state(resume_ckpt)
        if fsdp:
            runtime.load_full_state(model, optimizer, None, saved["optimizer"])
        else:
            optimizer.load_state_dict(saved["optimizer"])
        loader.load_state_dict(saved["loader"])
        state = LoopState.from_dict(saved["loop"])
        runtime.set_rng_state(saved["rng"])
    scaler = runtime.make_grad_scaler(rt)
    train_model = runtime.maybe_compile(model if fsdp else runtime.wrap_ddp(model, rt), rt, cfg.compile, budget_s)
    fpt = flops_per_token(mcfg, T)
    peak, peak_note = runtime.peak_flops(rt)

    runtime.print0(rt, f"[bold]model[/] {describe(mcfg)}  ({reason})")
    parallel = " (FSDP)" if fsdp else (" (DDP)" if rt.ddp else "")
    runtime.print0(rt, f"[bold]device[/] {rt.device_type} x{world}{parallel}, precision {rt.precision} "
                       f"({rt.precision_reason})")
    runtime.print0(rt, f"[bold]batch[/] {batch_size} x {T} = {batch_size * T:,} tokens/step "
                       f"(micro {micro}, accumulation {accum}), lr {lr:g}, {cfg.optimizer}")
    runtime.print0(rt, f"[bold]data[/] {len(train_tokens):,} train / {len(val_tokens):,} val tokens; "
                       f"budget {format_duration(budget_s) if budget_s else '-'}; MFU against {peak_note}")

    run_meta = {"model_config": to_dict(mcfg), "run_config": to_dict(cfg), "objective": cfg.objective,
                "model_kind": "lm", "data": str(data_dir), "vocab_size": vocab}
    metrics = MetricsLogger(out / "metrics.jsonl" if rt.is_main else None,
                            out / "tensorboard" if rt.is_main else None)

    def eval_on(max_tokens: int | None) -> dict[str, Any]:
        m = runtime.unwrap(train_model)
        if len(val_tokens) == 0:
            return {}
        if mcfg.causal:
            r = causal_nll(m, val_tokens, T, max(1, micro), rt, max_tokens)
            res = {"val_loss": r["loss"]}
            vbytes = int(manifest["splits"]["val"].get("bytes", 0))
            if not max_tokens or max_tokens >= len(val_tokens):
                if vbytes:
                    res["val_bpb"] = bits_per_byte(r["nll"], vbytes)
            return res
        r = masked_metrics(m, val_tokens, T, max(1, micro), rt, collator, max_tokens)
        return {"val_loss": r["loss"], "val_accuracy": r["accuracy"]}

    @functools.cache
    def unsharded():
        """FSDP: an unsharded CPU copy of the model, built once, that checkpoints are written from."""
        return build_model(mcfg)

    def save(st: LoopState, last_eval: dict[str, Any] | None, val_loss: float | None = None) -> None:
        if fsdp:
            model_state, optim_state = runtime.full_state(model, optimizer)  # every rank takes part
        if rt.is_main:
            out.mkdir(parents=True, exist_ok=True)
            write_json_atomic(out / "config.json", cfg)
            to_save = model
            if fsdp:
                to_save = unsharded()
                to_save.load_state_dict(model_state)
            payload = {"optimizer": optim_state if fsdp else optimizer.state_dict(), "loop": st.to_dict(),
                       "loader": loader.state_dict(), "rng": runtime.rng_state()}
            ck.save_checkpoint(out, st.step, to_save, {**run_meta, "metrics": last_eval or {}}, payload,
                               tok_path, cfg.keep_last, val_loss)
        runtime.barrier(rt)
        _fault_hook(st.step)

    def rollback() -> LoopState | None:
        ckpts = ck.list_checkpoints(out)
        if not ckpts:
            return None
        saved = ck.load_state(ckpts[-1])
        if fsdp:
            ck.load_weights(unsharded(), ckpts[-1])
            runtime.load_full_state(model, optimizer, unsharded().state_dict(), saved["optimizer"])
        else:
            ck.load_weights(model, ckpts[-1], rt.device)
            optimizer.load_state_dict(saved["optimizer"])
        loader.load_state_dict(saved["loader"])
        return LoopState.from_dict(saved["loop"])

    loop_cfg = LoopConfig(
        budget_s=budget_s, max_steps=cfg.max_steps or None, max_tokens=cfg.max_tokens or None,
        grad_accum=accum, grad_clip=cfg.grad_clip, eval_every=cfg.eval_every,
        checkpoint_every_s=parse_duration(cfg.checkpoint_every), checkpoint_every_steps=cfg.checkpoint_every_steps,
        log_every=max(1, cfg.log_every),
    )
    sched = ScheduleConfig(warmup=cfg.warmup, decay=cfg.decay, cooldown=cfg.cooldown)

    def checkpoint_hook(st: LoopState, last_eval):
        save(st, last_eval)

    try:
        with graceful_stop() as stop:
            result = train_loop(
                train_model, loader, optimizer, rt, loop_cfg, sched, state=state,
                evaluate=lambda m: eval_on(cfg.eval_tokens), checkpoint=checkpoint_hook,
                rollback=rollback, metrics=metrics, flops_per_token=fpt, peak_flops=peak, stop=stop,
                scaler=scaler, show_progress=rt.is_main,
            )
            state = result.state
            final_eval: dict[str, Any] = {}
            if not result.interrupted:
                final_eval = eval_on(None)
                if final_eval:
                    metrics.log({"step": state.step, "tokens": state.tokens,
                                 "elapsed_s": round(state.elapsed_s, 3), "final": True, **final_eval})
            save(state, final_eval or result.last_eval, final_eval.get("val_loss"))
    finally:
        metrics.close()

    summary: dict[str, Any] = {
        "run_dir": str(out), "objective": cfg.objective, "steps": state.step, "tokens": state.tokens,
        "elapsed_s": round(state.elapsed_s, 2), "train_loss": result.train_loss,
        "val_loss": final_eval.get("val_loss"), "params": num_params(mcfg),
        "model": describe(mcfg), "precision": rt.precision, "device": rt.device_type,
        "world_size": world, "parallel": "fsdp" if fsdp else ("ddp" if rt.ddp else "none"), "nan_skipped": state.nan_skipped, "rollbacks": state.rollbacks,
        "interrupted": result.interrupted,
    }
    if "val_bpb" in final_eval:
        summary["val_bpb"] = final_eval["val_bpb"]
    if "val_accuracy" in final_eval:
        summary["val_accuracy"] = final_eval["val_accuracy"]
    summary["tokens_per_s"] = round(state.tokens / max(state.elapsed_s, 1e-9), 1)
    if math.isfinite(peak):
        summary["mfu"] = round(fpt * summary["tokens_per_s"] / (peak * world), 4)
        summary["peak_flops_note"] = peak_note
    if rt.is_main:
        write_json_atomic(out / "summary.json", summary)
        write_report(out, summary, result.history)
        if result.interrupted:
            ui.warn(f"interrupted at step {state.step}: checkpoint saved; continue with --resume")
        else:
            vb = f", val bpb {summary['val_bpb']:.3f}" if "val_bpb" in summary else ""
            vl = summary["val_loss"]
            runtime.print0(rt, f"[bold]done[/] {state.step} steps, {state.tokens:,} tokens in "
                               f"{format_duration(state.elapsed_s)}; val loss "
                               f"{vl:.4f}{vb}" if vl is not None else f"[bold]done[/] {state.step} steps")
            runtime.print0(rt, f"report: {out / 'report.md'}")
    runtime.shutdown(rt)
    return summary
