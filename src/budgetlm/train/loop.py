"""THE training loop, shared by pre-training and fine-tuning.

It knows nothing about objectives or data formats. It receives

    model       an nn.Module (already on the device, possibly DDP/compile-wrapped)
    batches     a callable returning the next micro-batch: a dict of tensors passed as model(**batch)
    optimizer   from `train.optim` (every param group has a `base_lr`)
    rt          the `runtime.Runtime` (device, precision, ranks)
    cfg         LoopConfig (budget, accumulation, clipping, intervals)
    schedule    ScheduleConfig (LR as a function of progress through the budget)
    hooks       evaluate(model) -> dict, checkpoint(state, metrics), rollback() -> LoopState | None
            (an evaluation result with "stop": True ends the run early, e.g. on patience)

and runs optimizer steps until the budget (wall-clock seconds, steps or tokens) is spent or a stop
signal arrives. The budget clock counts only training: evaluation and checkpoint time are excluded
(modded-nanogpt pauses its timer around validation the same way), so the LR schedule, which is driven
by progress = elapsed / budget (Cramming), reaches its end exactly when the training time runs out.

Non-finite losses: the step is skipped and counted; after `nan_patience` in a row the loop rolls back
to the last checkpoint with the LR scaled by `nan_lr_factor`, and says so.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch

from budgetlm import runtime, ui
from budgetlm.config import BudgetError, format_duration
from budgetlm.train.optim import set_lr
from budgetlm.train.schedule import ScheduleConfig, lr_multiplier, progress


@dataclass
class LoopConfig:
    budget_s: float | None = None  # wall-clock training seconds (eval/checkpoint time excluded)
    max_steps: int | None = None  # stop after this many optimizer steps
    max_tokens: int | None = None  # stop after this many training tokens (all ranks)
    grad_accum: int = 1  # micro-batches per optimizer step (per rank)
    grad_clip: float = 1.0  # clip the global gradient norm to this (0 = off)
    eval_every: float = 0.25  # evaluate every this fraction of the budget (0 = only at the end)
    eval_every_steps: int = 0  # also evaluate every N optimizer steps (0 = off); exact under a time budget
    checkpoint_every_s: float = 600.0  # real seconds between periodic checkpoints (0 = only at the end)
    checkpoint_every_steps: int = 0  # also checkpoint every N optimizer steps (0 = off)
    log_every: int = 10  # optimizer steps between metric lines
    nan_patience: int = 5  # non-finite steps in a row before rolling back to the last checkpoint
    nan_lr_factor: float = 0.5  # LR multiplier applied at each roll-back

    def __post_init__(self) -> None:
        if not (self.budget_s or self.max_steps or self.max_tokens):
            raise BudgetError("give a budget: --budget DURATION, --max-steps N or --max-tokens N")
        if self.grad_accum < 1:
            raise BudgetError(f"grad_accum must be >= 1, got {self.grad_accum}")


@dataclass
class LoopState:
    step: int = 0  # optimizer steps taken
    tokens: int = 0  # training tokens consumed (all ranks)
    elapsed_s: float = 0.0  # budget clock: training seconds only
    nan_skipped: int = 0  # steps skipped for a non-finite loss or gradient
    rollbacks: int = 0  # times the run went back to a checkpoint
    lr_scale: float = 1.0  # product of roll-back LR reductions
    evals_done: int = 0  # periodic evaluations taken (to place the next one)
    best_val_loss: float | None = None  # best validation loss seen so far

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "LoopState":
        names = set(cls.__dataclass_fields__)
        return cls(**{k: v for k, v in d.items() if k in names})


@dataclass
class LoopResult:
    state: LoopState
    train_loss: float  # mean loss of the last logged window
    interrupted: bool  # stopped by SIGTERM/SIGINT
    stopped_early: bool = False  # an evaluation returned {"stop": True} (early stopping)
    history: list[dict[str, Any]] = field(default_factory=list)  # the metric lines
    last_eval: dict[str, Any] | None = None


def default_forward(model: torch.nn.Module, batch: dict[str, torch.Tensor]) -> torch.Tensor:
    """Models follow `logits, loss = model(idx, targets=..., attention_mask=...)`."""
    return model(**batch)[1]


def batch_tokens(batch: dict[str, torch.Tensor]) -> int:
    x = batch.get("idx")
    if x is None:
        x = next(iter(batch.values()))
    return int(x.numel())


# --------------------------------------------------------------------------------------------------
# stop signals


class StopFlag:
    """Set by SIGTERM/SIGINT (preemptible machines): the loop saves a checkpoint and returns."""

    def __init__(self) -> None:
        self.signum: int | None = None

    def __bool__(self) -> bool:
        return self.signum is not None

    def set(self, signum: int) -> None:
        self.signum = signum


@contextlib.contextmanager
def graceful_stop():
    flag = StopFlag()
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return
    old = {s: signal.getsignal(s) for s in (signal.SIGTERM, signal.SIGINT)}

    def handler(signum, frame):  # noqa: ARG001
        if flag:  # a second signal: the user means it
            signal.signal(signum, old[signum] if callable(old[signum]) else signal.SIG_DFL)
            raise KeyboardInterrupt
        flag.set(signum)

    for s in old:
        signal.signal(s, handler)
    try:
        yield flag
    finally:
        for s, h in old.items():
            signal.signal(s, h)


# --------------------------------------------------------------------------------------------------
# metrics


class MetricsLogger:
    """Metric lines to RUN/metrics.jsonl (opened lazily) and to TensorBoard when it is installed."""

    def __init__(self, path: str | Path | None, tensorboard_dir: str | Path | None = None):
        self.path = Path(path) if path else None
        self.tb_dir = tensorboard_dir
        self._fh = None
        self._tb = None

    def log(self, record: dict[str, Any]) -> None:
        if self.path is not None:
            if self._fh is None:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self._fh = open(self.path, "a", encoding="utf-8")
            self._fh.write(json.dumps(record) + "\n")
            self._fh.flush()
        if self.tb_dir is not None:
            if self._tb is None:
                try:
                    from torch.utils.tensorboard import SummaryWriter

                    self._tb = SummaryWriter(str(self.tb_dir))
                except Exception:  # noqa: BLE001 - tensorboard is optional
                    self.tb_dir = None
                    return
            for k, v in record.items():
                if isinstance(v, (int, float)) and k != "step":
                    self._tb.add_scalar(k, v, record.get("step", 0))

    def close(self) -> None:
        if self._fh is not None:
            self._fh.close()
            self._fh = None
        if self._tb is not None:
            self._tb.close()
            self._tb = None


# --------------------------------------------------------------------------------------------------
# the loop


def _is_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def train_loop(
    model: torch.nn.Module,
    batches: Callable[[], dict[str, torch.Tensor]],
    optimizer,
    rt: runtime.Runtime,
    cfg: LoopConfig,
    schedule: ScheduleConfig,
    *,
    state: LoopState | None = None,
    forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] = default_forward,
    evaluate: Callable[[torch.nn.Module], dict[str, Any]] | None = None,
    checkpoint: Callable[[LoopState, dict[str, Any] | None], None] | None = None,
    rollback: Callable[[], LoopState | None] | None = None,
    metrics: MetricsLogger | None = None,
    flops_per_token: float = 0.0,
    peak_flops: float = float("nan"),
    stop: StopFlag | None = None,
    scaler=None,
    show_progress: bool = True,
) -> LoopResult:
    state = state or LoopState()
    stop = stop if stop is not None else StopFlag()
    history: list[dict[str, Any]] = []
    last_eval: dict[str, Any] | None = None
    loss_window: list[float] = []
    step_ema = 0.0  # smoothed seconds per optimizer step (for the deadline and ETA)
    win_tokens, win_time = 0, 0.0
    last_ckpt_wall = time.perf_counter()
    bad_in_a_row = 0
    interrupted = False
    stopped_early = False
    train_loss = float("nan")

    def prog() -> float:
        return progress(state.elapsed_s, state.step, state.tokens, cfg.budget_s, cfg.max_steps, cfg.max_tokens)

    def run_eval() -> dict[str, Any] | None:
        nonlocal last_eval
        if evaluate is None:
            return None
        model.eval()
        with torch.no_grad():
            result = evaluate(model)
        model.train()
        last_eval = result
        vl = result.get("val_loss")
        if vl is not None and (state.best_val_loss is None or vl < state.best_val_loss):
            state.best_val_loss = vl
        rec = {"step": state.step, "tokens": state.tokens, "elapsed_s": round(state.elapsed_s, 3), **result}
        history.append(rec)
        if metrics is not None and rt.is_main:
            metrics.log(rec)
        return result

    model.train()
    budget_text = format_duration(cfg.budget_s) if cfg.budget_s else "-"
    with ui.progress(f"train ({budget_text})", total=1000) as bar:
        while True:
            # ---- stop conditions, checked before each step
            if stop:
                interrupted = True
                break
            # Stop when the next step would end further past the deadline than before it.
            p_next = progress(state.elapsed_s + 0.5 * step_ema, state.step, state.tokens,
                              cfg.budget_s, cfg.max_steps, cfg.max_tokens)
            if state.step > 0 and (p_next >= 1.0 or prog() >= 1.0):
                break

            # ---- one optimizer step: grad_accum micro-batches, clip, step
            t0 = time.perf_counter()
            lr = set_lr(optimizer, lr_multiplier(prog(), schedule) * state.lr_scale)
            step_loss = torch.zeros((), device=rt.device)
            step_tokens = 0
            finite = True
            for micro in range(cfg.grad_accum):
                batch = {k: v.to(rt.device, non_blocking=True) for k, v in batches().items()}
                step_tokens += batch_tokens(batch)
                with runtime.no_sync(model, micro == cfg.grad_accum - 1), runtime.autocast(rt):
                    loss = forward(model, batch)
                if not _is_finite(loss.detach()):
                    finite = False
                loss = loss / cfg.grad_accum
                if scaler is not None:
                    scaler.scale(loss).backward()
                else:
                    loss.backward()
                step_loss += loss.detach()
            if scaler is not None:
                scaler.unscale_(optimizer)
            if cfg.grad_clip > 0:
                gnorm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.grad_clip)
                if hasattr(gnorm, "full_tensor"):  # FSDP: a DTensor holding the global norm
                    gnorm = gnorm.full_tensor()
            else:
                gnorm = torch.zeros(())
            if scaler is None and finite and not _is_finite(gnorm):
                finite = False
            # Every rank must agree to skip, or DDP ranks would drift apart.
            if rt.ddp:
                finite = runtime.all_reduce_sum(rt, [0.0 if finite else 1.0])[0] == 0.0
            if finite:
                runtime.optimizer_step(rt, optimizer, scaler)
            optimizer.zero_grad(set_to_none=True)
            runtime.mark_step(rt)
            runtime.synchronize(rt)
            dt = time.perf_counter() - t0
            state.elapsed_s += dt
            step_tokens *= rt.world_size
            state.tokens += step_tokens
            state.step += 1
            step_ema = dt if step_ema == 0.0 else 0.9 * step_ema + 0.1 * dt

            if state.step == 1 and cfg.budget_s and dt > cfg.budget_s:
                raise BudgetError(
                    f"budget {cfg.budget_s:g}s is too small: one optimizer step takes "
                    f"{dt:.3g}s here; raise --budget or lower the batch size"
                )

            # ---- non-finite handling
            if not finite:
                state.nan_skipped += 1
                bad_in_a_row += 1
                if bad_in_a_row >= cfg.nan_patience:
                    restored = rollback() if rollback is not None else None
                    if restored is None:
                        raise BudgetError(
                            f"training diverged: {bad_in_a_row} non-finite losses in a row and no "
                            "checkpoint to roll back to; lower --lr"
                        )
                    elapsed, skipped, rb, scale = state.elapsed_s, state.nan_skipped, state.rollbacks, state.lr_scale
                    state = restored
                    state.elapsed_s, state.nan_skipped = elapsed, skipped  # spent time stays spent
                    state.rollbacks, state.lr_scale = rb + 1, scale * cfg.nan_lr_factor
                    ui.warn(
                        f"{bad_in_a_row} non-finite losses in a row: rolled back to step {state.step} "
                        f"with the learning rate scaled by {state.lr_scale:g}"
                    )
                    bad_in_a_row = 0
                continue
            bad_in_a_row = 0
            loss_val = float(runtime.all_reduce_mean(rt, float(step_loss)))
            loss_window.append(loss_val)
            win_tokens += step_tokens
            win_time += dt

            # ---- logging
            if state.step % cfg.log_every == 0 or state.step == 1:
                train_loss = sum(loss_window) / len(loss_window)
                tps = win_tokens / max(win_time, 1e-9)
                mfu = flops_per_token * tps / (peak_flops * rt.world_size) if flops_per_token else float("nan")
                rec = {"step": state.step, "tokens": state.tokens, "elapsed_s": round(state.elapsed_s, 3),
                       "loss": round(train_loss, 5), "lr": lr, "tokens_per_s": round(tps, 1),
                       "mfu": round(mfu, 4) if math.isfinite(mfu) else None}
                history.append(rec)
                if metrics is not None and rt.is_main:
                    metrics.log(rec)
                loss_window, win_tokens, win_time = [], 0, 0.0
                eta = (1.0 - prog()) * cfg.budget_s if cfg.budget_s else None
                status = f"loss {train_loss:.3f}  {tps:,.0f} tok/s"
                if math.isfinite(mfu):
                    status += f"  MFU {100 * mfu:.0f}%"
                if eta is not None:
                    status += f"  ETA {format_duration(eta)}"
                if show_progress:
                    bar.update(bar.task_ids[0], completed=int(1000 * prog()), status=status)

            # ---- periodic evaluation and checkpoints (both off the budget clock)
            by_fraction = cfg.eval_every > 0 and prog() >= (state.evals_done + 1) * cfg.eval_every
            by_steps = cfg.eval_every_steps > 0 and state.step % cfg.eval_every_steps == 0
            if (by_fraction or by_steps) and prog() < 1.0:
                if by_fraction:
                    state.evals_done += 1
                result = run_eval()
                if result is not None and result.get("stop"):
                    stopped_early = True
                    break
            by_time = cfg.checkpoint_every_s > 0 and time.perf_counter() - last_ckpt_wall >= cfg.checkpoint_every_s
            by_step = cfg.checkpoint_every_steps > 0 and state.step % cfg.checkpoint_every_steps == 0
            if checkpoint is not None and (by_time or by_step):
                checkpoint(state, last_eval)
                last_ckpt_wall = time.perf_counter()

        if show_progress:
            bar.update(bar.task_ids[0], completed=int(1000 * prog()))
    if loss_window:
        train_loss = sum(loss_window) / len(loss_window)
    return LoopResult(state=state, train_loss=train_loss, interrupted=interrupted,
                      stopped_early=stopped_early, history=history, last_eval=last_eval)
