"""THE training loop, shared by pre-training and fine-tuning.

It knows nothing about objectives or data formats. It receives

    setup       a `runtime.TrainSetup` (the model as the loop calls it, the plain model, the grad scaler)
    batches     a callable returning the next micro-batch: a dict of tensors passed as model(**batch)
    optimizer   from `train.optim` (every param group has a `base_lr`)
    rt          the `runtime.Runtime` (device, precision, ranks)
    cfg         LoopConfig (budget, accumulation, clipping, intervals)
    schedule    ScheduleConfig (LR as a function of progress through the budget)
    hooks       LoopHooks: evaluate(model, state) -> dict (a result with "stop": True ends the run
                early, e.g. on patience), checkpoint(state, last_eval), rollback() -> LoopState | None,
                on_step(model, state) after every applied optimizer step (weight averaging)

and runs optimizer steps until the budget (wall-clock seconds, steps or tokens) is spent or a stop
signal arrives. The budget clock counts only training: evaluation and checkpoint time are excluded
(modded-nanogpt pauses its timer around validation the same way), so the LR schedule, which is driven
by progress = elapsed / budget (Cramming), reaches its end exactly when the training time runs out.
Under DDP every rank books the slowest rank's step time, so all ranks share one clock.

Non-finite losses: the step is skipped and counted; after `nan_patience` in a row the loop rolls back
to the last checkpoint with the LR scaled by `nan_lr_factor`, and says so.
"""

from __future__ import annotations

import collections
import contextlib
import math
import signal
import threading
import time
from dataclasses import asdict, dataclass, field
from typing import Any, Callable

import torch

from budgetlm import runtime, ui
from budgetlm.config import BudgetError, format_duration
from budgetlm.training.optim import set_lr
from budgetlm.training.schedule import ScheduleConfig, lr_multiplier, progress
from budgetlm.training.track import MetricsLogger


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
    progress_every_s: float | None = None  # seconds between progress lines when stderr is no terminal (None: ui's default)
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
    train_loss: float  # mean training loss of the last max(10, log_every) applied steps
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
# the loop


@dataclass
class LoopHooks:
    """What the caller plugs into the loop; every hook is optional."""

    evaluate: Callable[[torch.nn.Module, LoopState], dict[str, Any]] | None = None  # periodic validation
    checkpoint: Callable[[LoopState, dict[str, Any] | None], None] | None = None  # save a checkpoint
    rollback: Callable[[], LoopState | None] | None = None  # restore the last checkpoint after divergence
    on_step: Callable[[torch.nn.Module, LoopState], None] | None = None  # after each applied optimizer step


def _is_finite(x: torch.Tensor) -> bool:
    return bool(torch.isfinite(x).all())


def clip_gradients(module: torch.nn.Module, max_norm: float) -> torch.Tensor:
    """Clip the global gradient norm of `module` to `max_norm` (0 = off); the norm before clipping."""
    if max_norm <= 0:
        return torch.zeros(())
    gnorm = torch.nn.utils.clip_grad_norm_(module.parameters(), max_norm)
    return gnorm.full_tensor() if hasattr(gnorm, "full_tensor") else gnorm  # FSDP: a DTensor


def apply_update(module: torch.nn.Module, optimizer, scaler, rt: runtime.Runtime, grad_clip: float,
                 finite: bool = True) -> bool:
    """The part of a step paid once per optimizer step, after the backward passes: unscale, clip, the
    update (skipped when a loss or, without a scaler, the gradient norm was not finite), zero the
    gradients. Returns whether the update was applied."""
    if scaler is not None:
        scaler.unscale_(optimizer)
    gnorm = clip_gradients(module, grad_clip)
    if scaler is None and finite and not _is_finite(gnorm):
        finite = False
    if rt.ddp:  # every rank must agree to skip, or DDP ranks would drift apart
        finite = runtime.all_reduce(rt, [0.0 if finite else 1.0])[0] == 0.0
    if finite:
        runtime.optimizer_step(rt, optimizer, scaler)
    optimizer.zero_grad(set_to_none=True)
    runtime.mark_step(rt)
    return finite


@dataclass
class _StepResult:
    loss: torch.Tensor  # mean loss over the micro-batches (device tensor)
    tokens: int  # tokens of this step on all ranks
    seconds: float  # wall time of the step
    lr: float  # learning rate used
    finite: bool  # loss and gradient norm were finite (the update was applied)


class _Loop:
    """One run of `train_loop`: the step, the stop rules, logging, evaluation and checkpoints."""

    def __init__(self, setup, batches, optimizer, rt, cfg: LoopConfig, schedule: ScheduleConfig,
                 state: LoopState, forward, hooks: LoopHooks, metrics, flops_per_token: float,
                 peak_flops: float, stop: StopFlag):
        self.setup, self.batches, self.optimizer, self.rt = setup, batches, optimizer, rt
        self.cfg, self.schedule, self.state, self.forward = cfg, schedule, state, forward
        self.hooks, self.metrics, self.stop = hooks, metrics, stop
        self.fpt, self.peak = flops_per_token, peak_flops
        self.history: list[dict[str, Any]] = []
        self.last_eval: dict[str, Any] | None = None
        self.window: list[float] = []  # losses since the last metric line
        self.recent: collections.deque[float] = collections.deque(maxlen=max(10, cfg.log_every))  # for train_loss
        self.win_tokens, self.win_time = 0, 0.0
        self.step_ema = 0.0  # smoothed seconds per optimizer step (for the deadline)
        self.bad_in_a_row = 0
        self.last_ckpt_wall = time.perf_counter()
        self.since_ckpt_s = 0.0  # wall seconds since the last checkpoint, as all ranks agree
        self.stop_agreed = False  # under DDP: some rank received a stop signal (the ranks stop together)
        self.train_loss = float("nan")

    def progress(self, extra_s: float = 0.0) -> float:
        s, c = self.state, self.cfg
        return progress(s.elapsed_s + extra_s, s.step, s.tokens, c.budget_s, c.max_steps, c.max_tokens)

    def finished(self) -> bool:
        """Stop when the next step would end further past the deadline than stopping now."""
        return self.state.step > 0 and (self.progress(0.5 * self.step_ema) >= 1.0 or self.progress() >= 1.0)

    def step(self) -> _StepResult:
        """grad_accum micro-batches, clip, optimizer step (skipped on any rank's non-finite value)."""
        rt, model, scaler, accum = self.rt, self.setup.module, self.setup.scaler, self.cfg.grad_accum
        t0 = time.perf_counter()
        lr = set_lr(self.optimizer, lr_multiplier(self.progress(), self.schedule) * self.state.lr_scale)
        total = torch.zeros((), device=rt.device)
        tokens, finite = 0, True
        for micro in range(accum):
            batch = {k: v.to(rt.device, non_blocking=True) for k, v in self.batches().items()}
            tokens += batch_tokens(batch)
            with runtime.no_sync(model, micro == accum - 1), runtime.autocast(rt):
                loss = self.forward(model, batch)
            finite = finite and _is_finite(loss.detach())
            loss = loss / accum
            (scaler.scale(loss) if scaler is not None else loss).backward()
            total += loss.detach()
        finite = apply_update(model, self.optimizer, scaler, rt, self.cfg.grad_clip, finite)
        runtime.synchronize(rt)
        seconds = self._agree(time.perf_counter() - t0)
        return _StepResult(total, tokens * rt.world_size, seconds, lr, finite)

    def _agree(self, seconds: float) -> float:
        """The step time every rank books: under DDP the slowest rank's, with any rank's stop signal
        and checkpoint clock. Ranks that kept their own clocks would train with different learning
        rates, and one that stopped a step earlier would leave the others waiting in a collective."""
        since = time.perf_counter() - self.last_ckpt_wall
        if not self.rt.ddp:
            self.since_ckpt_s = since
            return seconds
        seconds, self.since_ckpt_s, stop = runtime.all_reduce(self.rt, [seconds, since, float(bool(self.stop))], "max")
        self.stop_agreed = stop > 0
        return seconds

    def stopping(self) -> bool:
        """A stop signal to act on now: in one process as soon as it arrives, under DDP once the ranks
        have agreed on it at the end of a step."""
        return self.stop_agreed if self.rt.ddp else bool(self.stop)

    def account(self, r: _StepResult) -> None:
        s = self.state
        s.elapsed_s += r.seconds
        s.tokens += r.tokens
        s.step += 1
        self.step_ema = r.seconds if self.step_ema == 0.0 else 0.9 * self.step_ema + 0.1 * r.seconds
        if s.step == 1 and self.cfg.budget_s and r.seconds > self.cfg.budget_s:
            raise BudgetError(f"budget {self.cfg.budget_s:g}s is too small: one optimizer step takes "
                              f"{r.seconds:.3g}s here; raise --budget or lower the batch size")

    def diverged(self) -> None:
        """A skipped step; after `nan_patience` in a row, roll back with a lower learning rate."""
        s = self.state
        s.nan_skipped += 1
        self.bad_in_a_row += 1
        if self.bad_in_a_row < self.cfg.nan_patience:
            return
        restored = self.hooks.rollback() if self.hooks.rollback is not None else None
        if restored is None:
            raise BudgetError(f"training diverged: {self.bad_in_a_row} non-finite losses in a row and no "
                              "checkpoint to roll back to; lower --lr")
        # spent time stays spent
        restored.elapsed_s, restored.nan_skipped = s.elapsed_s, s.nan_skipped
        restored.rollbacks, restored.lr_scale = s.rollbacks + 1, s.lr_scale * self.cfg.nan_lr_factor
        self.state = restored
        ui.warn(f"{self.bad_in_a_row} non-finite losses in a row: rolled back to step {restored.step} "
                f"with the learning rate scaled by {restored.lr_scale:g}")
        self.bad_in_a_row = 0

    def log(self, r: _StepResult) -> str | None:
        """Every `log_every` steps: a metric line (history, metrics file) and the progress status."""
        self.window.append(float(runtime.all_reduce_mean(self.rt, float(r.loss))))
        self.recent.append(self.window[-1])
        self.win_tokens += r.tokens
        self.win_time += r.seconds
        s = self.state
        if not (s.step % self.cfg.log_every == 0 or s.step == 1):
            return None
        self.train_loss = sum(self.window) / len(self.window)
        tps = self.win_tokens / max(self.win_time, 1e-9)
        mfu = self.fpt * tps / (self.peak * self.rt.world_size) if self.fpt else float("nan")
        rec = {"step": s.step, "tokens": s.tokens, "elapsed_s": round(s.elapsed_s, 3),
               "loss": round(self.train_loss, 5), "lr": r.lr, "tokens_per_s": round(tps, 1),
               "mfu": round(mfu, 4) if math.isfinite(mfu) else None}
        self.record(rec)
        self.window, self.win_tokens, self.win_time = [], 0, 0.0
        status = f"step {s.step:,}  loss {self.train_loss:.3f}  lr {r.lr:.2e}  {tps:,.0f} tok/s"
        if math.isfinite(mfu):
            status += f"  MFU {100 * mfu:.0f}%"
        if self.cfg.budget_s:
            status += (f"  trained {format_duration(s.elapsed_s)}, "
                       f"{format_duration(max(0.0, self.cfg.budget_s - s.elapsed_s))} of the budget left")
        return status

    def record(self, rec: dict[str, Any]) -> None:
        self.history.append(rec)
        if self.metrics is not None and self.rt.is_main:
            self.metrics.log(rec)

    def evaluate(self) -> dict[str, Any] | None:
        if self.hooks.evaluate is None:
            return None
        s = self.state
        with torch.no_grad():
            result = self.hooks.evaluate(self.setup.model, s)
        self.setup.module.train()
        self.last_eval = result
        vl = result.get("val_loss")
        if vl is not None and (s.best_val_loss is None or vl < s.best_val_loss):
            s.best_val_loss = vl
        self.record({"step": s.step, "tokens": s.tokens, "elapsed_s": round(s.elapsed_s, 3), **result})
        return result

    def periodic(self) -> bool:
        """Evaluation and checkpoints, both off the budget clock; True when an evaluation says stop."""
        s, c = self.state, self.cfg
        by_fraction = c.eval_every > 0 and self.progress() >= (s.evals_done + 1) * c.eval_every
        by_steps = c.eval_every_steps > 0 and s.step % c.eval_every_steps == 0
        if (by_fraction or by_steps) and self.progress() < 1.0:
            s.evals_done += int(by_fraction)
            result = self.evaluate()
            if result is not None and result.get("stop"):
                return True
        by_time = c.checkpoint_every_s > 0 and self.since_ckpt_s >= c.checkpoint_every_s
        by_step = c.checkpoint_every_steps > 0 and s.step % c.checkpoint_every_steps == 0
        if self.hooks.checkpoint is not None and (by_time or by_step):
            self.hooks.checkpoint(s, self.last_eval)
            self.last_ckpt_wall = time.perf_counter()
        return False

    def run(self, show_progress: bool) -> LoopResult:
        interrupted = stopped_early = False
        budget_text = format_duration(self.cfg.budget_s) if self.cfg.budget_s else "-"
        self.setup.module.train()
        bar_cm = ui.progress(f"train ({budget_text})", total=100.0, every_s=self.cfg.progress_every_s, eta=False) \
            if show_progress else contextlib.nullcontext()
        with bar_cm as bar:
            while True:
                if self.stopping():
                    interrupted = True
                    break
                if self.finished():
                    break
                r = self.step()
                self.account(r)
                if not r.finite:
                    self.diverged()
                    continue
                self.bad_in_a_row = 0
                if self.hooks.on_step is not None:
                    self.hooks.on_step(self.setup.model, self.state)
                status = self.log(r)
                if status is not None and show_progress:
                    bar.update(completed=100.0 * min(1.0, self.progress()), status=status)
                if self.periodic():
                    stopped_early = True
                    break
            if show_progress:
                bar.update(completed=100.0 * min(1.0, self.progress()))
        if self.recent:  # smoothed: one step's loss is noisy
            self.train_loss = sum(self.recent) / len(self.recent)
        return LoopResult(state=self.state, train_loss=self.train_loss, interrupted=interrupted,
                          stopped_early=stopped_early, history=self.history, last_eval=self.last_eval)


def train_loop(
    setup: runtime.TrainSetup | torch.nn.Module,
    batches: Callable[[], dict[str, torch.Tensor]],
    optimizer,
    rt: runtime.Runtime,
    cfg: LoopConfig,
    schedule: ScheduleConfig,
    *,
    state: LoopState | None = None,
    forward: Callable[[torch.nn.Module, dict[str, torch.Tensor]], torch.Tensor] = default_forward,
    hooks: LoopHooks | None = None,
    metrics: MetricsLogger | None = None,
    flops_per_token: float = 0.0,
    peak_flops: float = float("nan"),
    stop: StopFlag | None = None,
    show_progress: bool = True,
) -> LoopResult:
    """Run optimizer steps until the budget is spent, a stop signal arrives or an evaluation asks to
    stop (see the module docstring). A bare module is trained as it is (no wrapping, no scaler)."""
    if isinstance(setup, torch.nn.Module):
        setup = runtime.TrainSetup(setup, setup, None, "none", False, "a plain module")
    loop = _Loop(setup, batches, optimizer, rt, cfg, schedule, state or LoopState(), forward,
                 hooks or LoopHooks(), metrics, flops_per_token, peak_flops,
                 stop if stop is not None else StopFlag())
    return loop.run(show_progress)
