"""Checkpoints: atomic, self-describing, resumable, and safe to open when they come from elsewhere.

Layout of a run directory:

    RUN/checkpoints/step_000120/   one complete checkpoint
        model.safetensors          weights (safetensors: no pickle, loadable by transformers tooling)
        state.json + state.safetensors
                                   optimizer, loop state (step, tokens, elapsed budget), data position,
                                   RNG states, grad scaler: everything `--resume` needs (no pickle:
                                   `train.statefile`)
        meta.json                  `CheckpointMeta`: model kind and shape, run config, metrics, and
                                   the SHA-256 of every other file in the checkpoint
        tokenizer.json             the tokenizer the model was trained with
    RUN/checkpoints/best.json      which step had the best validation loss

Atomicity: a checkpoint is written into a hidden temporary directory, every file is fsynced, then the
directory is renamed into place. A crash or SIGKILL mid-save leaves only a `.tmp-*` directory that
readers ignore (and the next save removes), so the previous checkpoint still loads. We keep the last
N plus the best.

Integrity: opening a checkpoint checks each file's SHA-256 against meta.json, and refuses weights
that are not finite, so a damaged or tampered checkpoint is named as such instead of producing
nonsense. Nothing in a checkpoint is executed: weights and state are safetensors and JSON.

`load_model(run_dir)` rebuilds the model through `MODEL_KINDS`, which the model modules fill
(`models.kinds` for budgetlm's own, `hf.MODEL_KINDS` for wrapped Hugging Face models).

A local Hugging Face Llama folder is accepted wherever a run is (`load_meta`, `load_weights`,
`load_model`): `hfmodels` reads it as a budgetlm causal model, and its meta says `origin="hf"`.
"""

from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import re
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_model as _st_load_model
from safetensors.torch import save_model as _st_save_model

from budgetlm import hf, hfmodels
from budgetlm.config import BudgetError, from_dict, to_dict
from budgetlm import fsio
from budgetlm.fsio import atomic_write_json, fsync_dir, is_temp
from budgetlm.models import kinds as model_kinds
from budgetlm.training import statefile

FORMAT_VERSION = 2
_STEP_RE = re.compile(r"^step_(\d+)$")

# kind -> builder(model_config, head) -> nn.Module (weights loaded afterwards)
MODEL_KINDS: dict[str, Callable[[dict[str, Any], dict[str, Any]], torch.nn.Module]] = {
    **model_kinds.MODEL_KINDS,
    **hf.MODEL_KINDS,
}


# --------------------------------------------------------------------------------------------------
# metadata


@dataclass
class ClassifierInfo:
    """What a fine-tuned classifier needs besides its weights to read text the way it was trained."""

    labels: list[str]  # class names, in the order of the model's outputs
    max_len: int  # tokens per example, special tokens included
    truncate: str = "head"  # which part of a longer text is kept (labelled.TRUNCATIONS)
    pooling: str | None = None  # sentence vector of a budgetlm backbone: cls | mean | last
    text_column: str = "text"  # labelled-file column of the text
    text_pair_column: str = ""  # column of the second text of sentence-pair tasks ("" = none)
    label_column: str = "label"  # column of the label
    source_run: str = ""  # the pre-trained model it was fine-tuned from
    source_objective: str = ""  # causal | masked (budgetlm backbones)


@dataclass
class QAInfo:
    """What an extractive question-answering run needs besides its weights to read questions and
    contexts the way it was trained."""

    max_len: int  # tokens per window: [CLS] question [SEP] piece of the context [SEP]
    doc_stride: int  # context tokens shared by consecutive windows of a long context
    max_question_len: int  # tokens of a question kept (longer questions are cut)
    max_answer_len: int  # longest answer, in tokens
    source_run: str = ""  # the pre-trained model it was fine-tuned from
    unanswerable: bool = False  # trained with questions its context does not answer (SQuAD v2.0): it may answer ""


@dataclass
class Seq2SeqInfo:
    """How a sequence-to-sequence run turns a source into its prompt and decodes the target."""

    template: str  # the prompt: "{source}" replaced by the source text; the target follows it
    max_target_tokens: int  # decoding stops here at the latest (1.5 x the longest training target)
    length_penalty: float = 1.0  # beam search: scores divided by length ** this (GNMT)
    source_run: str = ""  # the pre-trained model it was fine-tuned from


@dataclass
class CheckpointMeta:
    """meta.json: everything needed to rebuild and describe the model of one checkpoint."""

    kind: str  # MODEL_KINDS key: lm | classifier | hf-classifier | qa | hf-qa
    model_config: dict[str, Any]  # arguments that rebuild the model (ModelConfig fields or an HF config)
    objective: str = "causal"  # causal | masked (language models); classification for classifiers
    step: int = 0  # optimizer steps taken when it was written
    run_config: dict[str, Any] = field(default_factory=dict)  # the resolved config of the run that wrote it
    data: str = ""  # the dataset it was trained on
    vocab_size: int = 0  # tokens of its tokenizer
    metrics: dict[str, Any] = field(default_factory=dict)  # the last evaluation before the save
    val_loss: float | None = None  # validation loss of the final evaluation, when there was one
    classifier: ClassifierInfo | None = None  # set for fine-tuned classifiers
    qa: QAInfo | None = None  # set for question-answering runs
    seq2seq: Seq2SeqInfo | None = None  # set for sequence-to-sequence runs (kind lm: a causal LM with a template)
    checksums: dict[str, str] = field(default_factory=dict)  # file name -> SHA-256 of the other files
    format_version: int = FORMAT_VERSION  # layout of this file
    # where it was loaded from (set by load_meta, never written)
    path: str = field(default="", metadata={"transient": True})
    tokenizer_path: str = field(default="", metadata={"transient": True})
    origin: str = field(default="budgetlm", metadata={"transient": True})  # budgetlm | hf (a Hugging Face folder)

    @property
    def is_classifier(self) -> bool:
        return self.classifier is not None

    @property
    def causal(self) -> bool:
        return bool(self.model_config.get("causal", True))

    @property
    def run_dir(self) -> Path:
        """The run folder holding this checkpoint (RUN/checkpoints/step_N -> RUN); a Hugging Face folder itself."""
        return Path(self.path) if self.origin == "hf" else Path(self.path).parents[1]

    def to_json(self) -> dict[str, Any]:
        return {f.name: to_dict(getattr(self, f.name)) for f in dataclasses.fields(self)
                if not f.metadata.get("transient")}

    @classmethod
    def from_json(cls, data: dict[str, Any], where: str = "meta.json") -> "CheckpointMeta":
        version = data.get("format_version", 1)
        if version == 1:
            data = _upgrade_v1(data)
        elif version != FORMAT_VERSION:
            raise BudgetError(f"{where} has format version {version}; this budgetlm reads "
                              f"{FORMAT_VERSION} and 1: upgrade budgetlm to open it")
        try:
            meta = from_dict(cls, {k: v for k, v in data.items() if k not in ("path", "tokenizer_path")})
            if isinstance(meta.classifier, dict):
                meta.classifier = from_dict(ClassifierInfo, meta.classifier)
            if isinstance(meta.qa, dict):
                meta.qa = from_dict(QAInfo, meta.qa)
            if isinstance(meta.seq2seq, dict):
                meta.seq2seq = from_dict(Seq2SeqInfo, meta.seq2seq)
        except TypeError as e:
            raise BudgetError(f"{where} is corrupt: {e}") from None
        if not isinstance(meta.model_config, dict) or meta.kind not in MODEL_KINDS:
            raise BudgetError(f"{where} is corrupt: unknown model kind {meta.kind!r} or no model config")
        return meta


_V1_CLASSIFIER_KEYS = ("labels", "max_len", "truncate", "pooling", "text_column", "text_pair_column",
                       "label_column", "source_run", "source_objective")


def _upgrade_v1(d: dict[str, Any]) -> dict[str, Any]:
    """meta.json of format 1 (a flat dict) -> format 2 fields."""
    kind = d.get("model_kind", "lm")
    out = {k: d[k] for k in ("model_config", "objective", "step", "run_config", "data", "vocab_size",
                             "metrics", "val_loss") if k in d}
    if kind == "classifier":
        out["classifier"] = {k: d[k] for k in _V1_CLASSIFIER_KEYS if k in d}
        out["classifier"].setdefault("truncate", "head")  # runs from before --truncate kept the head
        out["run_config"] = d.get("finetune_config", {})
        out["metrics"] = d.get("val_metrics", {})
        out["objective"] = "classification"
        kind = "hf-classifier" if d.get("backbone") == "hf" else "classifier"
    out["kind"] = kind
    return out


# --------------------------------------------------------------------------------------------------
# saving


def checkpoints_dir(run_dir: str | Path) -> Path:
    return Path(run_dir) / "checkpoints"




def _write_files(tmp: Path, model: torch.nn.Module, meta: CheckpointMeta, state: dict[str, Any] | None,
                 tokenizer_path: str | Path | None) -> None:
    _st_save_model(model, str(tmp / "model.safetensors"))  # handles tied (shared) tensors
    if state is not None:
        statefile.save_state(tmp, state)
    if tokenizer_path is not None and Path(tokenizer_path).exists():
        shutil.copyfile(tokenizer_path, tmp / "tokenizer.json")
    meta.checksums = {p.name: fsio.sha256_file(p) for p in sorted(tmp.iterdir()) if p.name != "meta.json"}
    (tmp / "meta.json").write_text(json.dumps(meta.to_json(), indent=2), encoding="utf-8")
    for f in tmp.iterdir():
        with open(f, "rb+") as fh:
            os.fsync(fh.fileno())
    fsync_dir(tmp)


def save_checkpoint(run_dir: str | Path, step: int, model: torch.nn.Module, meta: CheckpointMeta,
                    state: dict[str, Any] | None = None, tokenizer_path: str | Path | None = None,
                    keep_last: int = 2, val_loss: float | None = None) -> Path:
    """Write RUN/checkpoints/step_XXXXXX atomically; return its path. `model` must be unwrapped."""
    root = checkpoints_dir(run_dir)
    root.mkdir(parents=True, exist_ok=True)
    final = root / f"step_{step:06d}"
    tmp = root / f".tmp-step_{step:06d}-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    meta = dataclasses.replace(meta, step=step, val_loss=val_loss, format_version=FORMAT_VERSION)
    try:
        _write_files(tmp, model, meta, state, tokenizer_path)
    except Exception as e:
        shutil.rmtree(tmp, ignore_errors=True)  # a failed save (disk full) leaves nothing behind
        if not isinstance(e, OSError) and "os error 28" in str(e):  # safetensors' own error for ENOSPC
            raise OSError(errno.ENOSPC, "No space left on device") from None
        raise
    if final.exists():  # re-saving the same step (e.g. the final save right after a periodic one)
        old = root / f".old-step_{step:06d}.tmp-{os.getpid()}"
        os.rename(final, old)
        os.rename(tmp, final)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, final)
    fsync_dir(root)
    if val_loss is not None:
        best = read_best(run_dir)
        if best is None or val_loss <= best["val_loss"]:
            atomic_write_json(root / "best.json", {"step": step, "val_loss": val_loss})
    prune(run_dir, keep_last)
    return final


def remove_temps(run_dir: str | Path) -> list[Path]:
    """Remove half-written checkpoints that a crashed save left (call with the run's lock held)."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [p for p in root.iterdir() if is_temp(p)]
    for p in found:
        shutil.rmtree(p, ignore_errors=True) if p.is_dir() else p.unlink(missing_ok=True)
    return found


def read_best(run_dir: str | Path) -> dict[str, Any] | None:
    path = checkpoints_dir(run_dir) / "best.json"
    try:
        best = json.loads(path.read_text())
        return best if isinstance(best, dict) and isinstance(best.get("step"), int) else None
    except (OSError, ValueError):
        return None


def list_checkpoints(run_dir: str | Path) -> list[Path]:
    """Complete checkpoints (temporary directories are ignored), oldest first."""
    root = checkpoints_dir(run_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := _STEP_RE.match(p.name)) and p.is_dir()]
    return [p for _, p in sorted(found)]


def prune(run_dir: str | Path, keep_last: int) -> None:
    ckpts = list_checkpoints(run_dir)
    best = read_best(run_dir)
    best_name = f"step_{best['step']:06d}" if best else None
    for p in ckpts[: max(0, len(ckpts) - max(1, keep_last))]:
        if p.name != best_name:
            shutil.rmtree(p, ignore_errors=True)


# --------------------------------------------------------------------------------------------------
# loading


def resolve_checkpoint(path: str | Path, which: str = "latest") -> Path:
    """A run directory or a checkpoint directory -> the checkpoint directory to load."""
    path = Path(path)
    if (path / "meta.json").is_file() and (path / "model.safetensors").exists():
        return path
    if not path.exists():
        raise BudgetError(f"no model at {path}: expected a run directory written by `budgetlm train`")
    ckpts = list_checkpoints(path)
    if not ckpts:
        raise BudgetError(f"{path} holds no checkpoint (no {path}/checkpoints/step_*/): is it a run directory?")
    if which == "best":
        best = read_best(path)
        if best:
            cand = checkpoints_dir(path) / f"step_{best['step']:06d}"
            if cand.is_dir():
                return cand
    return ckpts[-1]


def load_meta(path: str | Path, which: str = "latest") -> CheckpointMeta:
    """The CheckpointMeta of a run's (or a checkpoint directory's) checkpoint, with `path` and
    `tokenizer_path` filled in, or of a Hugging Face Llama folder (`hfmodels`). Unreadable or unknown
    metadata is a one-line BudgetError."""
    if hfmodels.is_hf_folder(path):
        return hf_folder_meta(path)
    ckpt = resolve_checkpoint(path, which)
    try:
        data = json.loads((ckpt / "meta.json").read_text(encoding="utf-8"))
    except (OSError, ValueError) as e:
        raise BudgetError(f"checkpoint {ckpt} is corrupt: unreadable meta.json ({e})") from None
    if not isinstance(data, dict):
        raise BudgetError(f"checkpoint {ckpt} is corrupt: meta.json is not an object")
    meta = CheckpointMeta.from_json(data, f"checkpoint {ckpt}")
    meta.path = str(ckpt.resolve())
    tok = ckpt / "tokenizer.json"
    meta.tokenizer_path = str(tok.resolve()) if tok.exists() else ""
    return meta


def hf_folder_meta(path: str | Path) -> CheckpointMeta:
    """A Hugging Face Llama folder described as a checkpoint of a budgetlm causal LM (step 0, no run)."""
    folder = hfmodels.read_folder(path)
    vocab = folder.config.vocab_size
    if folder.tokenizer_path:
        from budgetlm.data.tokenizer import load_tokenizer

        vocab = load_tokenizer(folder.tokenizer_path).get_vocab_size()
    meta = CheckpointMeta(kind="lm", model_config=to_dict(folder.config), objective="causal", vocab_size=vocab)
    meta.path, meta.tokenizer_path, meta.origin = str(Path(path).resolve()), folder.tokenizer_path, "hf"
    return meta


def verify_files(meta: CheckpointMeta, names: tuple[str, ...]) -> None:
    """Check the SHA-256 of the named files against meta.json (checkpoints of format 1 have none)."""
    ckpt = Path(meta.path)
    for name in names:
        want = meta.checksums.get(name)
        if want is None or not (ckpt / name).exists():
            continue
        if fsio.sha256_file(ckpt / name) != want:
            raise BudgetError(f"checkpoint {ckpt} is corrupt: {name} does not match its checksum "
                              "(damaged or modified); use another checkpoint of the run or re-train")


def _check_finite(model: torch.nn.Module, ckpt: str) -> None:
    for name, t in model.state_dict().items():
        if t.is_floating_point() and not bool(torch.isfinite(t).all()):
            raise BudgetError(f"checkpoint {ckpt} is corrupt: {name} holds NaN or infinite weights")


def _load_hf_weights(model: torch.nn.Module, meta: CheckpointMeta) -> None:
    """A Hugging Face folder's weights (`hfmodels`), the vocabulary grown to the model's when the
    run's tokenizer added tokens after the folder's."""
    sd = hfmodels.load_state_dict(meta.path)
    sd = hfmodels.grow_vocab(sd, model.state_dict()["embed.weight"].shape[0])
    try:
        model.load_state_dict(sd, strict=True)
    except RuntimeError as e:  # shapes that disagree with config.json
        detail = next((x.strip() for x in str(e).splitlines() if "size mismatch" in x), str(e).splitlines()[0])
        raise BudgetError(f"{meta.path}: the weights do not match its config.json ({detail})") from None
    _check_finite(model, meta.path)


def load_weights(model: torch.nn.Module, meta: CheckpointMeta, device: str | torch.device = "cpu") -> None:
    """Verified weights of the checkpoint `meta` describes, into `model` (which must match)."""
    if meta.origin == "hf":
        return _load_hf_weights(model, meta)
    verify_files(meta, ("model.safetensors",))
    ckpt = meta.path
    try:
        missing, unexpected = _st_load_model(model, str(Path(ckpt) / "model.safetensors"), strict=False,
                                             device=str(device))
    except Exception as e:  # noqa: BLE001 - safetensors raises several types for damaged files
        raise BudgetError(f"checkpoint {ckpt} is corrupt: cannot read model.safetensors ({e})") from None
    if missing or unexpected:
        raise BudgetError(f"checkpoint {ckpt} does not match its model config "
                          f"(missing {sorted(missing)[:3]}, unexpected {sorted(unexpected)[:3]})")
    _check_finite(model, ckpt)


def build(meta: CheckpointMeta) -> torch.nn.Module:
    """The (untrained) model a checkpoint describes."""
    head = dataclasses.asdict(meta.classifier) if meta.classifier else {}
    try:
        return MODEL_KINDS[meta.kind](meta.model_config, head)
    except (TypeError, ValueError, KeyError) as e:
        raise BudgetError(f"checkpoint {meta.path} is corrupt: bad model config ({e})") from None


def load_model(run_dir: str | Path, device: str | torch.device = "cpu",
               which: str = "latest") -> tuple[torch.nn.Module, CheckpointMeta]:
    """Rebuild a trained model: `(model, meta)`, model in eval mode on `device`.
    Missing, corrupt or mismatched checkpoints raise BudgetError with one clear line."""
    meta = load_meta(run_dir, which)
    model = build(meta)
    load_weights(model, meta, "cpu")
    model.to(device).eval()
    return model, meta


def load_state(meta: CheckpointMeta) -> dict[str, Any]:
    """The resumable training state (optimizer, loop counters, RNG, data position), verified."""
    ckpt = Path(meta.path)
    if not (ckpt / statefile.JSON_NAME).exists():
        legacy = " (it has a state.pt written by an older budgetlm, which is not loaded: pickle can run code)" \
            if (ckpt / "state.pt").exists() else ""
        raise BudgetError(f"checkpoint {ckpt} has no training state{legacy}: cannot resume; "
                          "start a new run with --init-from to keep its weights")
    verify_files(meta, (statefile.JSON_NAME, statefile.TENSORS_NAME))
    try:
        return statefile.load_state(ckpt)
    except Exception as e:  # noqa: BLE001
        raise BudgetError(f"checkpoint {ckpt} is corrupt: cannot read its training state ({e})") from None


def finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None
