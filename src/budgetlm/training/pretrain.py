"""Pre-training under a wall-clock budget: `train(TrainConfig) -> RunResult`.

Wires the pieces together: dataset + tokenizer -> model (explicit, or the planner's plan for the
budget) -> runtime (device, precision, DDP/FSDP) -> optimizer, schedule, loader -> `train.loop` with
evaluation and checkpoint hooks -> final evaluation on the whole val split, final checkpoint,
RUN/report.md with a loss curve. `resume=True` continues a run with its budget accounting intact.

Run directory: config.json (the resolved run config: the model shape, precision and compile setting
actually used; `budgetlm train --config RUN/config.json` re-runs the same job), plan.json (the plan
the run followed, when it was planned), metrics.jsonl, checkpoints/, report.md, loss.png,
summary.json. Nothing is written before the first optimizer step has succeeded, and an existing run
is never overwritten.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
import os
import shutil
import signal
from pathlib import Path
from typing import Any

from budgetlm import fsio, runtime, ui
from budgetlm.config import BudgetError, format_duration, parse_duration, to_dict
from budgetlm.data.shards import Dataset
from budgetlm.fsio import atomic_write_json
from budgetlm.models.presets import describe, num_params
from budgetlm.planning import flops_per_token, single_step_speed
from budgetlm.training import checkpoint as ck
from budgetlm.training.job import (  # noqa: F401 - TrainConfig and RunResult are this module's interface too
    ModelChoice,
    RunResult,
    TrainConfig,
    choose_model,
    ema_for_steps,
    resolve_config,
)
from budgetlm.training.schedule import progress


# --------------------------------------------------------------------------------------------------
# the run


def _fault_hook(step: int) -> None:
    """Fault injection for the crash tests: BUDGETLM_FAULT_KILL_AFTER_STEP=N SIGKILLs the process
    right after the checkpoint of step N is on disk (a power cut, as far as the run can tell)."""
    want = os.environ.get("BUDGETLM_FAULT_KILL_AFTER_STEP")
    if want and int(want) == step:
        os.kill(os.getpid(), signal.SIGKILL)


class _Run:
    """One training run: the objects it builds and the hooks the loop calls."""

    def __init__(self, cfg: TrainConfig, choice: ModelChoice, data: Dataset, rt, budget_s: float | None):
        self.cfg, self.choice, self.data, self.rt, self.budget_s = cfg, choice, data, rt, budget_s
        self.out = Path(cfg.out)
        self.mcfg = choice.model
        self.val_tokens = data.tokens("val")
        self.fsdp = cfg.fsdp and rt.ddp
        world = rt.world_size
        if cfg.batch_size % world:
            raise BudgetError(f"--batch-size {cfg.batch_size} is not divisible by the {world} processes")
        per_rank = cfg.batch_size // world
        self.micro = min(cfg.micro_batch or per_rank, per_rank)
        if per_rank % self.micro:
            raise BudgetError(f"--micro-batch {self.micro} does not divide the per-device batch {per_rank}")
        self.accum = per_rank // self.micro
        if cfg.fsdp and not rt.ddp:
            ui.warn("--fsdp has no effect in a single process: launch with torchrun --nproc_per_node N")
        if self.fsdp and cfg.optimizer != "adamw":
            raise BudgetError("--fsdp needs --optimizer adamw: Muon orthogonalises whole matrices, which FSDP "
                              "splits across ranks")
        if self.fsdp and cfg.ema:
            raise BudgetError("--ema is not supported with --fsdp: the average would need the whole weights on each rank")
        self.averaged = None  # the weight average (--ema), once the cool-down has begun
        self.ema_used: float | None = None  # its decay, set with it

    def build(self):
        """Model (with source weights), training set-up, optimizer, loader, and the loop state."""
        from budgetlm.data.loader import MaskingCollator, MaskingConfig, TokenLoader
        from budgetlm.data.tokenizer import special_ids
        from budgetlm.models.transformer import build_model
        from budgetlm.training.loop import LoopState
        from budgetlm.training.optim import OptimConfig, build_optimizer, muon_precision

        cfg, rt = self.cfg, self.rt
        model = build_model(self.mcfg)
        model.activation_checkpointing = cfg.activation_checkpointing
        if self.choice.source is not None:
            ck.load_weights(model, self.choice.source, "cpu")  # full weights, before any sharding
        self.setup = runtime.prepare_training(model, rt, cfg.compile, self.budget_s, self.fsdp)
        self.optimizer = build_optimizer(cfg.optimizer, self.setup.model,
                                         OptimConfig(lr=cfg.lr, weight_decay=cfg.weight_decay,
                                                     muon_precision=muon_precision(rt.precision)))
        self.collator = None
        if not self.mcfg.causal:
            ids = special_ids(self.data.tokenizer())
            self.collator = MaskingCollator(MaskingConfig(rate=cfg.mask_rate), ids["mask"], self.mcfg.vocab_size,
                                            [v for k, v in ids.items() if k != "unk"])
        self.loader = TokenLoader(self.data.tokens("train"), self.mcfg.max_seq_len, self.micro, seed=cfg.seed,
                                  mode=cfg.sampling, rank=rt.rank, world_size=rt.world_size, collator=self.collator,
                                  input_noise=cfg.input_noise)
        self.state = LoopState()
        if cfg.resume:
            self.state = self._restore(ck.load_state(self.choice.source), load_weights=False)

    def _restore(self, saved: dict[str, Any], load_weights: bool):
        from budgetlm.training.loop import LoopState

        if self.fsdp:
            model_state = None
            if load_weights:
                ck.load_weights(self.unsharded(), self.choice.source)
                model_state = self.unsharded().state_dict()
            runtime.load_full_state(self.setup.model, self.optimizer, model_state, saved["optimizer"])
        else:
            self.optimizer.load_state_dict(saved["optimizer"])
        self.loader.load_state_dict(saved["loader"])
        runtime.set_rng_state(saved["rng"])
        if self.setup.scaler is not None and saved.get("scaler"):
            self.setup.scaler.load_state_dict(saved["scaler"])
        return LoopState.from_dict(saved["loop"])

    @functools.cache  # noqa: B019 - one per run
    def unsharded(self):
        """FSDP: an unsharded CPU copy of the model, built once, that checkpoints are written from."""
        from budgetlm.models.transformer import build_model

        return build_model(self.mcfg)

    def meta(self, metrics: dict[str, Any] | None) -> ck.CheckpointMeta:
        return ck.CheckpointMeta(kind="lm", model_config=to_dict(self.mcfg), objective=self.cfg.objective,
                                 run_config=to_dict(self.cfg), data=str(self.data.path),
                                 vocab_size=self.data.vocab_size, metrics=metrics or {})

    def save(self, st, last_eval: dict[str, Any] | None, val_loss: float | None = None) -> None:
        rt = self.rt
        if self.fsdp:
            model_state, optim_state = runtime.full_state(self.setup.model, self.optimizer)  # every rank takes part
        if rt.is_main:
            self.out.mkdir(parents=True, exist_ok=True)
            # resolved and re-runnable: `train --config RUN/config.json --out NEW` repeats this job
            atomic_write_json(self.out / "config.json", dataclasses.replace(self.cfg, resume=False))
            if self.choice.plan is not None:
                atomic_write_json(self.out / "plan.json", self.choice.plan.to_json())
            to_save = self.setup.model
            if self.fsdp:
                to_save = self.unsharded()
                to_save.load_state_dict(model_state)
            payload = {"optimizer": optim_state if self.fsdp else self.optimizer.state_dict(), "loop": st.to_dict(),
                       "loader": self.loader.state_dict(), "rng": runtime.rng_state(),
                       "scaler": self.setup.scaler.state_dict() if self.setup.scaler is not None else None}
            try:
                ck.save_checkpoint(self.out, st.step, to_save, self.meta(last_eval), payload,
                                   self.data.tokenizer_path, self.cfg.keep_last, val_loss)
            except OSError as e:  # a full disk is the user's to fix, not an internal error
                need = 4 * num_params(self.mcfg) * (3 if self.cfg.optimizer == "adamw" else 2)
                raise fsio.space_error(e, self.out, need) or e from None
        runtime.barrier(rt)
        _fault_hook(st.step)

    def rollback(self):
        ckpts = ck.list_checkpoints(self.out)
        if not ckpts:
            return None
        meta = ck.load_meta(ckpts[-1])
        if not self.fsdp:
            ck.load_weights(self.setup.model, meta, self.rt.device)
        self.choice = dataclasses.replace(self.choice, source=meta)
        return self._restore(ck.load_state(meta), load_weights=True)

    def evaluate(self, model, max_tokens: int | None) -> dict[str, Any]:
        from budgetlm.evaluate import bits_per_byte, causal_nll, masked_metrics

        if len(self.val_tokens) == 0:
            return {}
        T, batch = self.mcfg.max_seq_len, max(1, self.micro)
        if self.mcfg.causal:
            r = causal_nll(model, self.val_tokens, T, batch, self.rt, max_tokens)
            res = {"val_loss": r["loss"]}
            vbytes = self.data.split_bytes("val")
            if vbytes and (not max_tokens or max_tokens >= len(self.val_tokens)):
                res["val_bpb"] = bits_per_byte(r["nll"], vbytes)
            return res
        r = masked_metrics(model, self.val_tokens, T, batch, self.rt, self.collator, max_tokens)
        return {"val_loss": r["loss"], "val_accuracy": r["accuracy"]}

    def loop(self, stop, metrics):
        from budgetlm.training.loop import LoopConfig, LoopHooks, train_loop
        from budgetlm.training.schedule import ScheduleConfig

        cfg = self.cfg
        loop_cfg = LoopConfig(
            budget_s=self.budget_s, max_steps=cfg.max_steps or None, max_tokens=cfg.max_tokens or None,
            grad_accum=self.accum, grad_clip=cfg.grad_clip, eval_every=cfg.eval_every,
            checkpoint_every_s=parse_duration(cfg.checkpoint_every), checkpoint_every_steps=cfg.checkpoint_every_steps,
            log_every=max(1, cfg.log_every), progress_every_s=cfg.progress_every)
        hooks = LoopHooks(evaluate=lambda m, st: self.evaluate(m, cfg.eval_tokens), rollback=self.rollback,
                          checkpoint=lambda st, last: self.save(st, last), on_step=self.average if cfg.ema else None)
        self.peak, self.peak_note = runtime.peak_flops(self.rt)
        return train_loop(self.setup, self.loader, self.optimizer, self.rt, loop_cfg,
                          ScheduleConfig(warmup=cfg.warmup, decay=cfg.decay, cooldown=cfg.cooldown),
                          state=self.state, hooks=hooks, metrics=metrics, flops_per_token=self.fpt,
                          peak_flops=self.peak, stop=stop, show_progress=self.rt.is_main)

    def average(self, model, st) -> None:
        """--ema: an exponential moving average of the weights over the last `cooldown` of the run (the
        loop's on_step hook). Averaging the iterates as the LR decays ends lower than the last iterate
        on repeated data (docs/bench/training.md); the periodic evaluations see the raw weights."""
        cfg = self.cfg
        done = progress(st.elapsed_s, st.step, st.tokens, self.budget_s, cfg.max_steps or None, cfg.max_tokens or None)
        if done < 1.0 - cfg.cooldown:
            return
        if self.averaged is None:  # the first update copies the weights
            from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

            self.ema_used = self.ema_now(st, done)
            self.averaged = AveragedModel(self.setup.module, multi_avg_fn=get_ema_multi_avg_fn(self.ema_used))
        self.averaged.update_parameters(self.setup.module)

    def ema_now(self, st, done: float) -> float:
        """The average's decay: --ema, or, where budgetlm chose it, a fifth of the cool-down's steps at
        the pace this run has trained so far (the plan's step count came from a predicted speed)."""
        if not (self.choice.auto_ema and 0 < done < 1):
            return self.cfg.ema
        steps = st.step * (1.0 - done) / done  # (remaining progress) / (progress per step so far)
        decay = ema_for_steps(steps)  # 0 (the last weights) for a cool-down too short to average
        runtime.print0(self.rt, f"weight average from step {st.step:,}: decay {decay:g} (~{steps:,.0f} cool-down "
                                f"steps at this run's pace; planned {self.cfg.ema:g})")
        return decay

    def take_average(self) -> None:
        """Put the weight average into the model: what the final evaluation measures and the final
        checkpoint keeps. An interrupted run keeps its raw weights, to resume from (the average restarts)."""
        import torch

        if self.averaged is not None:
            with torch.no_grad():
                for p, a in zip(self.setup.module.parameters(), self.averaged.module.parameters()):
                    p.copy_(a)

    @property
    def fpt(self) -> float:
        return flops_per_token(self.mcfg, self.mcfg.max_seq_len, None if self.mcfg.causal else self.cfg.mask_rate)

    def show(self) -> None:
        cfg, rt, T = self.cfg, self.rt, self.mcfg.max_seq_len
        parallel = {"fsdp": " (FSDP)", "ddp": " (DDP)"}.get(self.setup.parallel, "")
        runtime.print0(rt, f"[bold]model[/] {describe(self.mcfg)}  ({self.choice.reason})")
        runtime.print0(rt, f"[bold]device[/] {rt.device_type} x{rt.world_size}{parallel}, precision {rt.precision} "
                           f"({rt.precision_reason}{runtime.attention_note(rt)}); compile {'on' if self.setup.compiled else 'off'} "
                           f"({self.setup.compile_reason})")
        runtime.print0(rt, f"[bold]batch[/] {cfg.batch_size} x {T} = {cfg.batch_size * T:,} tokens/step "
                           f"(micro {self.micro}, accumulation {self.accum}), lr {cfg.lr:g}, {cfg.optimizer}")
        runtime.print0(rt, f"[bold]data[/] {len(self.data.tokens('train')):,} train / {len(self.val_tokens):,} val "
                           f"tokens; budget {format_duration(self.budget_s) if self.budget_s else '-'}")

    def result(self, loop_result, final_eval: dict[str, Any]) -> RunResult:
        st, rt = loop_result.state, self.rt
        tps = round(st.tokens / max(st.elapsed_s, 1e-9), 1)
        mfu = round(self.fpt * tps / (self.peak * rt.world_size), 4) if math.isfinite(self.peak) else None
        plan = self.choice.plan
        return RunResult(
            run_dir=str(self.out), objective=self.cfg.objective, steps=st.step, tokens=st.tokens,
            elapsed_s=round(st.elapsed_s, 2), train_loss=loop_result.train_loss, val_loss=final_eval.get("val_loss"),
            params=num_params(self.mcfg), model=describe(self.mcfg), precision=rt.precision,
            compiled=self.setup.compiled, device=rt.device_type, world_size=rt.world_size,
            parallel=self.setup.parallel, nan_skipped=st.nan_skipped, rollbacks=st.rollbacks,
            interrupted=loop_result.interrupted, tokens_per_s=tps, val_bpb=final_eval.get("val_bpb"),
            val_accuracy=final_eval.get("val_accuracy"), mfu=mfu, peak_flops_note=self.peak_note if mfu else "",
            planned_tokens_per_s=round(plan.tokens_per_second, 1) if plan is not None else None,
            ema=self.ema_used)


def _check_memory(run: "_Run") -> None:
    """Refuse, before anything is allocated, a micro-batch the plan says cannot fit in this
    device's memory (the OS would kill the process without a word)."""
    from budgetlm.calibration import local
    from budgetlm.planning import memory_breakdown

    if run.rt.device_type not in ("cpu", "cuda"):
        return
    device, _, _ = local()
    cfg, T = run.cfg, run.mcfg.max_seq_len
    need = memory_breakdown(run.mcfg, device, run.micro, T, run.rt.precision, cfg.activation_checkpointing,
                            cfg.optimizer, run.rt.world_size if run.fsdp else 1,
                            pred_fraction=None if run.mcfg.causal else cfg.mask_rate)["total"]
    if device.memory_bytes and need > device.memory_bytes:
        raise BudgetError(f"a micro-batch of {run.micro} x {T} tokens needs about {need / 2**30:,.1f} GiB but "
                          f"{device.name} has {device.memory_bytes / 2**30:,.1f} GiB: lower --batch-size or "
                          "--micro-batch (accumulation keeps the batch), or --seq-len")


def _resolved_precision(cfg: TrainConfig, rt) -> TrainConfig:
    """The precision, device and compile setting actually used go into config.json."""
    return dataclasses.replace(cfg, precision=rt.precision, device=rt.device_type)


def train(cfg: TrainConfig, given: dict[str, Any] | None = None) -> RunResult:
    """Pre-train a causal or masked model as `cfg` says; see the module docstring.

    The run folder is locked while the run writes it (a second `train` into it is refused) and marked
    as a training run. A run that fails before its first checkpoint leaves nothing behind; one killed
    before it can simply be started again."""
    cfg = resolve_config(cfg, given)
    out = Path(cfg.out)
    main = os.environ.get("RANK", "0") == "0"  # under torchrun rank 0 owns the folder
    created = not out.exists()
    with fsio.FolderLock(out) if main else contextlib.nullcontext():
        if main:
            _claim(out)
        try:
            return _train(cfg)
        except BaseException:
            if main and created and not ck.list_checkpoints(out):
                shutil.rmtree(out, ignore_errors=True)
            raise


def _claim(out: Path) -> None:
    """Mark the folder as a training run; clear what a crashed run left (half-written checkpoints,
    or everything when it never reached a checkpoint)."""
    ck.remove_temps(out)
    fsio.remove_stale_temps(out)
    if not ck.list_checkpoints(out):
        for p in out.iterdir():
            if p.name not in (fsio.LOCK,):
                shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    fsio.write_marker(out, "train")


def _train(cfg: TrainConfig) -> RunResult:
    from budgetlm.training.loop import graceful_stop
    from budgetlm.training.track import MetricsLogger
    from budgetlm.training.report import pretraining_report

    data = Dataset.open(cfg.data)
    data.check()  # shard checksums and token ids, before a model is built
    if len(data.tokens("train")) == 0:
        raise BudgetError(f"{data.path} has an empty train split")
    budget_s = parse_duration(cfg.budget) if cfg.budget else None
    rt = runtime.init_runtime(cfg.device, cfg.precision, cfg.seed, distributed=True)
    choice = choose_model(cfg, data, budget_s, rt)
    run = _Run(_resolved_precision(choice.cfg, rt), choice, data, rt, budget_s)
    _check_memory(run)
    if rt.is_main and choice.plan is not None:
        from budgetlm.training.report import show_plan

        show_plan(choice.plan, budget_s)
    run.build()
    run.cfg = dataclasses.replace(run.cfg, compile="on" if run.setup.compiled else "off")
    run.show()
    metrics = MetricsLogger(run.out / "metrics.jsonl" if rt.is_main else None, run.cfg.track if rt.is_main else [],
                            run.out, to_dict(run.cfg))
    try:
        with graceful_stop() as stop:
            result = run.loop(stop, metrics)
            final_eval: dict[str, Any] = {}
            if not result.interrupted:
                run.take_average()
                final_eval = run.evaluate(run.setup.model, None)
                if final_eval:
                    st = result.state
                    metrics.log({"step": st.step, "tokens": st.tokens, "elapsed_s": round(st.elapsed_s, 3),
                                 "final": True, **final_eval})
            run.save(result.state, final_eval or result.last_eval, final_eval.get("val_loss"))
    finally:
        metrics.close()
    summary = run.result(result, final_eval)
    if rt.is_main:
        summary.plan_correction = _correct_plan(run, summary)
        atomic_write_json(run.out / "summary.json", summary.to_json())
        pretraining_report(run.out, summary.to_json(), result.history)
        _say_done(summary, rt)
    runtime.shutdown(rt)
    return summary


def _correct_plan(run: _Run, s: RunResult) -> str:
    """When the run's speed is more than CORRECT_BEYOND from its plan's, record the run in this
    device's calibration so that the next plan predicts from what actually ran; say so."""
    from budgetlm.training.calibrate import CORRECT_BEYOND, record_run

    plan = run.choice.plan
    if plan is None or s.interrupted or s.steps < 20 or run.rt.world_size > 1:
        return ""
    if (run.cfg.batch_size * run.mcfg.max_seq_len, run.micro) != (plan.global_batch_tokens, plan.micro_batch):
        # a batch or micro-batch given by hand: fewer optimizer steps per token run faster (up to 1.6x
        # at 0.3M parameters), so this speed is not the plan's to correct
        return ""
    ratio = s.tokens_per_s / plan.tokens_per_second
    if abs(ratio - 1) <= CORRECT_BEYOND:
        return ""
    m, T = run.mcfg, run.mcfg.max_seq_len
    # kept as calibration keeps its points: steps of one micro-batch each (the plan amortises the
    # optimizer step over its accumulation again)
    single = single_step_speed(s.tokens_per_s, run.micro * T, plan.grad_accum, plan.optimizer_seconds)
    point = {"depth": m.n_layer, "width": m.n_embd, "params": s.params, "seq_len": T, "micro_batch": run.micro,
             "precision": run.rt.precision, "compile": s.compiled, "dropout": m.dropout,
             "optimizer": run.cfg.optimizer, "steps": s.steps, "grad_accum": plan.grad_accum,
             "tokens_per_second": single, "flops_per_token": run.fpt, "achieved_flops": run.fpt * single,
             "optimizer_seconds": plan.optimizer_seconds, "source": "training run"}
    try:
        record_run(point, run.rt.precision)
    except OSError as e:  # a full or read-only BUDGETLM_HOME must not cost the finished run its summary
        ui.warn(f"could not record this run's speed in the device's calibration ({e}); the run is complete")
        return ""
    note = (f"achieved {s.tokens_per_s:,.0f} tokens/s, {ratio:.0%} of the plan's {plan.tokens_per_second:,.0f}: "
            "this device's calibration now includes this run's speed, so the next plan predicts from it")
    ui.info(f"[bold]plan[/] {note}")
    return note


def _say_done(s: RunResult, rt) -> None:
    if s.interrupted:
        ui.warn(f"interrupted at step {s.steps}: checkpoint saved; continue with --resume")
        return
    vb = f", val bpb {s.val_bpb:.3f}" if s.val_bpb is not None else ""
    vl = f"; val loss {s.val_loss:.4f}{vb}" if s.val_loss is not None else ""
    runtime.print0(rt, f"[bold]done[/] {s.steps} steps, {s.tokens:,} tokens in {format_duration(s.elapsed_s)}{vl}")
    runtime.print0(rt, f"report: {Path(s.run_dir) / 'report.md'}")
