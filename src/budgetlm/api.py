"""The Python API: what every `budgetlm` command calls, and what a script or notebook calls.

    import budgetlm

    plan = budgetlm.plan(device="nvidia-rtx-3090", budget="1d")      # a Plan
    data = budgetlm.prepare(out="runs/data", builtin="python-docs")   # a Dataset
    run = budgetlm.train(budgetlm.TrainConfig(data=data.path, out="runs/gpt", budget="10m"))
    model = budgetlm.load(run.run_dir)                                 # model + tokenizer
    model.generate("def ")

Functions here take a config dataclass (or keyword arguments building one), do the work through the
library modules and return typed results; they never print tables (commands do).
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

from budgetlm.catalog import Device
from budgetlm.config import BudgetError
from budgetlm.planning import DEFAULT_SEQ_LEN, PRECISION_ORDER, Plan, PlanConfig  # torch-free, as all of planning is
from budgetlm.planning.choose import ChooseConfig, Option

if TYPE_CHECKING:  # the heavy modules load when a function needs them, so `plan` stays torch-free
    from budgetlm.data.prepare import PrepareConfig
    from budgetlm.data.shards import Dataset
    from budgetlm.training.checkpoint import CheckpointMeta
    from budgetlm.training.job import RunResult, TrainConfig

# --------------------------------------------------------------------------------------------------
# plan



def plan(config: PlanConfig | None = None, **settings: Any) -> Plan:
    """Plan a training run for a device and a budget (`budgetlm plan`): the compute-optimal model
    (model="auto") or a given depth or preset (and n_embd), with memory, time and cost.
    `settings` are PlanConfig fields: `plan(device="nvidia-rtx-3090", budget="1d")`.
    Bad input, and a given model that does not fit, raise a one-line BudgetError. No torch is
    imported unless device="local" has to look for a GPU."""
    job = _PlanJob.of(config, settings)
    device, cal = job.device(job.cfg.device)
    if job.cfg.model == "auto":
        return job.auto(device, cal)
    depth, width = job.shape()
    p = job.fixed(device, cal, depth, width)
    if not p.fits:
        from budgetlm.planning import estimate

        c = job.cfg
        fits_on = [d.id for d in job.catalog.values() if any(d.training_peak(q) for q in PRECISION_ORDER)
                   and estimate(p.model, d, 1, c.seq_len, c.num_devices, c.optimizer_for, None, None, c.pred_fraction).fits]
        raise BudgetError(f"model {depth} x {p.model.n_embd} ({p.params / 1e6:,.1f}M parameters) does not fit on "
                          f"{device.id}: {p.notes[0].removeprefix('does not fit: ')}"
                          + (f"; it fits on {', '.join(fits_on[:5])}" if fits_on else "; it fits on no catalog device"))
    return p


def compare(config: PlanConfig | None = None, **settings: Any) -> list[Plan]:
    """The same budget and model shape on every catalog device with a compute figure for the
    precision asked: each row is exactly `plan(device=<id>, model=<depth>, n_embd=<width>)` with the
    same other settings, so fits, precision, batch, memory, tokens, time and cost are the
    single-device plan's (rows that do not fit are kept, marked fits=False). With model="auto" the
    shape is the auto plan's on `device`. Order: fitting rows first, then the most tokens trained in
    the budget (the fastest device) first, the lower cost first on a tie."""
    job = _PlanJob.of(config, settings)
    if job.cfg.model == "auto":
        ref = job.auto(*job.device(job.cfg.device))
        depth, width = ref.model.n_layer, ref.model.n_embd
    else:
        job.device(job.cfg.device)  # an unknown id fails here, as it does without --compare
        depth, width = job.shape()
    rows = [job.fixed(*job.device(d.id), depth, width) for d in job.catalog.values() if job.can_plan(d)]
    rows.sort(key=lambda p: (not p.fits, -p.tokens, p.cost_usd if p.cost_usd is not None else float("inf")))
    return rows


def choose(config: PlanConfig | None = None, choice: ChooseConfig | None = None, **settings: Any) -> list[Option]:
    """Rank rentable options (1-8 GPUs of each kind, TPU slices as rented) for a job: with a fixed
    model and `tokens`, the time and cost of training those tokens; with model="auto", the model each
    option trains by the deadline (`budget`), or sooner when `choice.max_cost` runs out first, and its
    predicted loss. See `planning.choose`."""
    from budgetlm.planning.choose import counts_for, judge, rank

    job = _PlanJob.of(config, settings)
    choice = choice or ChooseConfig()
    fixed = job.cfg.model != "auto"
    if fixed and not job.data_tokens:
        raise BudgetError("a fixed --model needs the job's size: --tokens N or --data DIR (the tokens to train)")
    frags = [f.strip().lower() for f in choice.only.split(",") if f.strip()]
    shape = job.shape() if fixed else None
    options = []
    for d in job.catalog.values():
        if not d.prices or not job.can_plan(d) or (frags and not any(f in d.id for f in frags)):
            continue
        if d.memory_bytes < choice.min_memory_gb * 1e9:
            continue
        cal = job.device(d.id)[1]
        for n in counts_for(d.price.min_devices if d.price else 1, choice.counts):
            sub = dataclasses.replace(job, cfg=dataclasses.replace(job.cfg, num_devices=n))
            if not fixed and choice.max_cost and d.price:  # the model the cap buys: train until the money is spent
                hours = choice.max_cost / (d.price.usd_per_hour * max(n, d.price.min_devices))
                sub = dataclasses.replace(sub, budget_s=min(job.budget_s, hours * 3600))
            plan = sub.fixed(d, cal, *shape, tokens=job.data_tokens) if fixed else sub.auto(d, cal)
            options.append(judge(plan, n, job.budget_s, choice))
    if not options:
        raise BudgetError("no catalog device matches: check --only, --min-memory-gb and --market")
    return rank(options, choice)


@dataclasses.dataclass
class _PlanJob:
    """A PlanConfig resolved once: budget in seconds, data, catalog and calibration file."""

    cfg: PlanConfig  # the settings, checked
    budget_s: float  # the budget in seconds
    data_tokens: int | None  # tokens of data available (None: unlimited)
    vocab_size: int  # tokenizer vocabulary
    catalog: dict[str, Device]  # id -> device: the packaged catalog and the user's file
    calibrations: dict[str, Any]  # the calibration file's devices

    @classmethod
    def of(cls, config: PlanConfig | None, settings: dict[str, Any]) -> _PlanJob:
        from budgetlm import calibration
        from budgetlm.catalog import load_catalog
        from budgetlm.config import parse_duration

        cfg = dataclasses.replace(config or PlanConfig(), **settings)
        cfg.check()
        cfg = dataclasses.replace(cfg, seq_len=cfg.seq_len or DEFAULT_SEQ_LEN[cfg.objective])
        budget_s = parse_duration(cfg.budget)
        tokens, vocab = (int(cfg.tokens) if cfg.tokens is not None else None), cfg.vocab_size
        if cfg.data:
            from budgetlm.data.shards import read_manifest

            manifest = read_manifest(cfg.data)
            tokens = int(manifest["splits"]["train"]["tokens"])
            vocab = vocab or int(manifest["tokenizer"]["vocab_size"])
        return cls(cfg, budget_s, tokens, vocab or 8192, load_catalog(cfg.catalog_file, cfg.market),
                   calibration.load(cfg.calibration)["devices"])

    @property
    def precisions(self) -> tuple[str, ...] | None:
        return None if self.cfg.precision == "auto" else (self.cfg.precision,)

    def can_plan(self, device: Device) -> bool:
        """The device has a peak FLOP/s for the precision asked (any, with auto)."""
        return any(device.training_peak(p) for p in self.precisions or PRECISION_ORDER)

    def device(self, name: str) -> tuple[Device, dict[str, Any] | None]:
        """(device, its calibration entry or None) for a catalog id or "local". A calibration
        applies to the local device, and to the catalog entry the local accelerator matched."""
        from budgetlm import calibration
        from budgetlm.catalog import get_device

        if name == "local":
            dev, _, cal = calibration.local(self.catalog, self.cfg.calibration)
        else:
            dev = get_device(name, self.catalog)
            cal = next((e for e in self.calibrations.values()
                        if e.get("catalog_id") == dev.id and dev.kind != "cpu"), None)
        # the points measured as `train` would run this plan (its compile rule, no dropout), where there are any
        compiles = calibration.compiles_by_default(dev.kind, self.budget_s)
        cal = calibration.prefer_setting(cal, self.cfg.seq_len, compiles)
        if not self.can_plan(dev) and self.precisions:
            supported = ", ".join(p for p in PRECISION_ORDER if dev.training_peak(p)) or "none"
            raise BudgetError(f"{dev.id} has no {self.cfg.precision} peak in the catalog; it supports {supported}")
        if not self.can_plan(dev):
            raise BudgetError(f"{dev.id} has no compute figure in the catalog (memory only); "
                              "run `budgetlm bench` on it or add tflops in --catalog-file")
        return dev, cal

    def shape(self) -> tuple[int, int]:
        """(depth, width) of a given model; width 0 = 64 x depth."""
        from budgetlm.models.presets import depth_of

        try:
            return depth_of(self.cfg.model), self.cfg.n_embd
        except ValueError as e:
            raise BudgetError(str(e)) from None

    def auto(self, device: Device, cal: dict[str, Any] | None) -> Plan:
        from budgetlm.planning import auto_plan

        c = self.cfg
        return auto_plan(device, self.budget_s, self.data_tokens, c.seq_len, c.objective, self.vocab_size, cal,
                         c.num_devices, c.optimizer_for, precisions=self.precisions, pred_fraction=c.pred_fraction)

    def fixed(self, device: Device, cal: dict[str, Any] | None, depth: int, width: int,
              tokens: int | None = None) -> Plan:
        """The plan of one shape: for the budget, or (with `tokens`) for training that many tokens."""
        from budgetlm.models.presets import model_config
        from budgetlm.planning import estimate

        c = self.cfg
        try:
            mcfg = model_config(depth, self.vocab_size, causal=c.objective == "causal", max_seq_len=c.seq_len,
                                width=width or None)
        except ValueError as e:
            raise BudgetError(f"model {depth} x {width}: {e}") from None
        return estimate(mcfg, device, tokens or 0, c.seq_len, c.num_devices, c.optimizer_for, cal, self.data_tokens,
                        c.pred_fraction, self.precisions, budget_s=None if tokens else self.budget_s)

# --------------------------------------------------------------------------------------------------
# prepare


def prepare(inputs: list[str] | tuple[str, ...] = (), out: str = "", config: PrepareConfig | None = None,
            val_inputs: list[str] | None = None, **settings: Any) -> Dataset:
    """Clean, tokenize and pack raw text into a dataset folder at `out` (see `data.prepare`).
    `settings` are PrepareConfig fields, e.g. `prepare(out="runs/data", builtin="python-docs")`."""
    from budgetlm.data.prepare import PrepareConfig, prepare_dataset
    from budgetlm.data.shards import Dataset

    cfg = dataclasses.replace(config or PrepareConfig(), **settings)
    summary = prepare_dataset(list(inputs), out, cfg, val_inputs)
    return dataclasses.replace(Dataset.open(summary["out"]), summary=summary)

# --------------------------------------------------------------------------------------------------
# train


def train(config: TrainConfig | None = None, given: dict[str, Any] | None = None, **settings: Any) -> RunResult:
    """Pre-train a causal or masked model under a budget; see `train.pretrain`.
    `budgetlm.train(TrainConfig(data=..., out=..., budget="10m"))` or `budgetlm.train(data=..., ...)`.
    `given`: the settings the user gave explicitly (a resumed run keeps its saved config otherwise)."""
    from budgetlm.training.pretrain import TrainConfig, train as run_training

    cfg = dataclasses.replace(config or TrainConfig(), **settings)
    return run_training(cfg, given)


def calibrate(config=None, **settings: Any) -> dict[str, Any]:
    """Measure training steps on this device and update the calibration file (`budgetlm bench`)."""
    from budgetlm.training.calibrate import CalibrationConfig, calibrate as measure

    return measure(dataclasses.replace(config or CalibrationConfig(), **settings))

# --------------------------------------------------------------------------------------------------
# finetune


def finetune(config=None, **settings: Any):
    """Fine-tune a pre-trained run (or a local Hugging Face model) as a sequence classifier, or with
    task="qa" as an extractive question answerer, or with task="seq2seq" on source -> target pairs;
    `budgetlm.finetune(FinetuneConfig(model=..., train=..., out=...))` -> `finetune.FinetuneResult`."""
    from budgetlm.finetuning import TASKS, FinetuneConfig, finetune as run_finetune
    from budgetlm.qa import qa_task
    from budgetlm.seq2seq import seq2seq_task

    return run_finetune(dataclasses.replace(config or FinetuneConfig(), **settings),
                        {**TASKS, "qa": qa_task, "seq2seq": seq2seq_task})

# --------------------------------------------------------------------------------------------------
# prune


def prune(config=None, **settings: Any):
    """Prune a run into a smaller one (`budgetlm prune`; see `budgetlm.prune`) -> `prune.PruneResult`.
    With `recover_budget`, the pruned model is staged in a hidden sibling of `out` and trained on
    through `train(init_from=...)` into `out`; the staged copy is removed afterwards."""
    import shutil

    from budgetlm import fsio
    from budgetlm.prune import MARKER_KIND, PruneConfig, prune_run, recovery_config

    cfg = dataclasses.replace(config or PruneConfig(), **settings)
    cfg.check()
    out = fsio.check_output(cfg.out, [cfg.model, cfg.data], MARKER_KIND, overwrite=cfg.overwrite)
    if not cfg.recover_budget:
        return prune_run(cfg, out)
    staged = out.with_name(f".{out.name}.pruned{fsio.TMP_MARK}{os.getpid()}")
    shutil.rmtree(staged, ignore_errors=True)
    try:
        result = prune_run(dataclasses.replace(cfg, overwrite=False), staged)
        recovery = recovery_config(cfg, staged, staged)
        if out.exists():  # an earlier prune output, which check_output allowed --overwrite to replace
            shutil.rmtree(out)
        run = train(**recovery)
        fsio.write_marker(out, MARKER_KIND)
        result = dataclasses.replace(result, run_dir=str(out), recovered=run.to_json())
        fsio.atomic_write_json(out / "prune.json", result.to_json())
        return result
    finally:
        shutil.rmtree(staged, ignore_errors=True)

# --------------------------------------------------------------------------------------------------
# load: a trained run as a model with its tokenizer


@dataclass
class LoadedModel:
    """A trained or fine-tuned run, ready to use: `generate`, `generate_batch`, `evaluate`, `classify`."""

    model: Any  # the torch module, in eval mode
    meta: CheckpointMeta  # what the checkpoint says about itself
    tokenizer: Any  # a `tokenizers.Tokenizer` (None for wrapped Hugging Face classifiers and question answerers)
    device: str  # where the model lives

    @property
    def kind(self) -> str:
        """causal | masked | classifier | qa"""
        if self.meta.is_classifier:
            return "classifier"
        if self.meta.qa is not None:
            return "qa"
        return "causal" if self.meta.causal else "masked"

    def generate(self, prompt: str = "", max_new_tokens: int = 200, temperature: float = 0.8, top_k: int = 200,
                 top_p: float = 1.0, seed: int | None = None) -> str:
        """The prompt's continuation (text only, without the prompt)."""
        from budgetlm.generate import complete

        if self.kind != "causal":
            raise BudgetError(f"{self.meta.run_dir} holds a {self.kind} model: generation needs a causal model")
        return complete(self.model, self.tokenizer, prompt, max_new_tokens, temperature, top_k, top_p, seed).text

    def generate_batch(self, prompts: list[str], max_new_tokens: int = 200, temperature: float = 0.8,
                       top_k: int = 200, top_p: float = 1.0, seed: int | None = None,
                       batch_size: int = 16) -> list[str]:
        """Each prompt's continuation, in order, `batch_size` prompts decoded together; with a seed,
        each equals `generate(prompt, ..., seed=seed)` (see `generate.complete_batch`)."""
        from budgetlm.generate import complete_batch

        if self.kind != "causal":
            raise BudgetError(f"{self.meta.run_dir} holds a {self.kind} model: generation needs a causal model")
        return [c.text for c in complete_batch(self.model, self.tokenizer, list(prompts), max_new_tokens,
                                               temperature, top_k, top_p, seed, batch_size)]

    def evaluate(self, data: str | None = None, texts: list[str] | None = None, split: str = "val",
                 batch_size: int = 8, max_tokens: int = 0) -> dict[str, Any]:
        """Loss, perplexity and bits per byte (causal) or masked accuracy, on a prepared dataset's
        split (`data`) or on text files (`texts`)."""
        from budgetlm.evaluate import evaluate_run

        return evaluate_run(self.model, self.meta, self.tokenizer, self.device, data, texts, split,
                            batch_size, max_tokens)

    def classify(self, texts: list[str], pairs: list[str] | None = None, batch_size: int = 64) -> list[dict[str, Any]]:
        """[{"label": ..., "probs": {label: p}}] for each text (fine-tuned classifiers)."""
        from budgetlm.classify import load_classifier

        if self.kind != "classifier":
            raise BudgetError(f"{self.meta.run_dir} is a {self.kind} language model, not a fine-tuned classifier")
        clf = load_classifier(self.meta.path, device=self.device)
        probs = clf.predict(texts, pairs, batch_size)
        return [{"label": clf.labels[int(row.argmax())], "probs": dict(zip(clf.labels, map(float, row)))}
                for row in probs]


    def answer(self, questions: list[str], contexts: list[str], batch_size: int = 32) -> list[dict[str, Any]]:
        """[{"answer", "score", "start", "end"}] for each question: the span of its context that answers
        it (question-answering runs; `start`/`end` are character offsets in the context)."""
        from budgetlm.qa import LoadedQA, qa_reader

        if self.kind != "qa":
            raise BudgetError(f"{self.meta.run_dir} holds a {self.kind} model, not a question-answering run")
        if len(questions) != len(contexts):
            raise BudgetError(f"{len(questions)} questions but {len(contexts)} contexts: give one context per question")
        tok, layout = qa_reader(self.meta)  # the pair layout (and a Hugging Face run's tokenizer) of the run
        return LoadedQA(self.model, tok, self.meta.qa, self.meta, self.device, layout).answer(questions, contexts,
                                                                                           batch_size)


def load(run: str | Path, device: str = "cpu", which: str = "latest") -> LoadedModel:
    """A run folder (or one of its checkpoints), or a local Hugging Face Llama folder (`hfmodels`),
    as a model with its tokenizer."""
    from budgetlm.data.tokenizer import load_tokenizer
    from budgetlm.runtime import detect_device_type
    from budgetlm.training.checkpoint import load_model

    dev = detect_device_type(device)
    model, meta = load_model(run, device=dev, which=which)
    tok = load_tokenizer(meta.tokenizer_path) if meta.tokenizer_path else None
    return LoadedModel(model, meta, tok, dev)
