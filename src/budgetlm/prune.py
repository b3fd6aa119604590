"""Pruning a trained run into a smaller one: `prune_run(PruneConfig)` (`budgetlm prune`).

Two methods (`METHODS`):

- structured (default): remove the same fraction of attention heads and of gated-MLP channels from
  every block and keep the survivors' weights, giving a smaller DENSE model: fewer heads of the same
  size (`ModelConfig.head_size`) and a narrower `intermediate_size`. It is a normal run that every
  command loads, and its matmuls are smaller, so it runs faster on any kernel. One count per layer
  (not a global ranking) because `ModelConfig` has one n_head and one MLP width for all blocks.
- magnitude: the simple baseline, global unstructured magnitude pruning with `torch.nn.utils.prune`
  (Han et al. 2015): the smallest block weights are set to zero, shapes stay. Dense kernels multiply
  the zeros anyway, so it saves no time or memory unless a sparse kernel runs it.

Importance of a head or channel (`IMPORTANCE`), used by the structured method:

- weights: the L2 norm of every weight that belongs to it (its q, k and v rows and its columns of the
  output projection; its gate and up rows and its column of the down projection). No data needed.
- activations: first-order Taylor importance (Molchanov et al. 2019, "Importance Estimation for
  Neural Network Pruning"): |sum over the sequence of activation x dLoss/dactivation|, averaged over
  the examples of a few batches of the run's data: the loss change, to first order, if that head's
  output (or that channel) were zeroed. Language models only: it needs the training objective.

Embeddings, norms and the heads (LM head, prediction head, classifier) are never pruned.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from budgetlm import fsio, runtime
from budgetlm.config import BudgetError, check_ranges, parse_duration, ranged, to_dict
from budgetlm.models.config import ModelConfig
from budgetlm.models.presets import num_params
from budgetlm.models.transformer import Transformer
from budgetlm.training import checkpoint as ck

MARKER_KIND = "prune"


@dataclass
class PruneConfig:
    model: str = ""  # run (or checkpoint) directory to prune: a causal or masked LM, or a fine-tuned budgetlm classifier
    out: str = ""  # run directory to write the pruned model to
    sparsity: float = 0.25  # structured: fraction of attention heads and MLP channels removed in every block; magnitude: fraction of block weights zeroed; in (0, 1)
    method: Literal["structured", "magnitude"] = "structured"  # structured: a smaller dense model; magnitude: zeroed weights, same shapes (a baseline, no speed-up)
    importance: Literal["weights", "activations"] = "weights"  # what ranks heads and channels: weight L2 norms, or |activation x gradient| on --batches of data (Molchanov et al. 2019)
    data: str = ""  # prepared dataset for --importance activations and --recover-budget (default: the run's own training data)
    batches: int = ranged(8, 1, 10**6)  # batches of the train split that --importance activations averages over
    batch_size: int = ranged(8, 1, 1 << 16)  # sequences per batch for --importance activations
    seq_len: int = ranged(0, 8, 1 << 20, also=(0,))  # tokens per sequence for --importance activations (0 = the model's context)
    recover_budget: str = ""  # after pruning, continue training the pruned model for this long (e.g. 1m) with `budgetlm train --init-from` on --data (default: none)
    device: str = "auto"  # where --importance activations runs: auto | cpu | cuda | mps
    seed: int = ranged(0, 0, 2**63 - 1)  # random seed of the batches (and of the recovery run)
    which: Literal["latest", "best"] = "latest"  # checkpoint of --model to prune
    overwrite: bool = False  # replace --out if an earlier `budgetlm prune` wrote it

    def check(self) -> None:
        check_ranges(self)
        if not self.model:
            raise BudgetError("give --model RUN: the run to prune")
        if not self.out:
            raise BudgetError("give --out DIR: the folder to write the pruned run to")
        if not (isinstance(self.sparsity, (int, float)) and 0.0 < self.sparsity < 1.0):
            raise BudgetError(f"--sparsity must be in (0, 1) (the fraction removed), got {self.sparsity!r}")
        if self.method == "magnitude" and self.importance != "weights":
            raise BudgetError("--importance activations ranks heads and channels: it needs --method structured")
        if self.recover_budget:
            parse_duration(self.recover_budget)
            if self.method == "magnitude":
                raise BudgetError("--recover-budget with --method magnitude would train the zeroed weights "
                                  "back to non-zero values: recover structured pruning only")


@dataclass
class PruneResult:
    """What `budgetlm prune` reports (also RUN/prune.json)."""

    run_dir: str  # the pruned run
    source: str  # the checkpoint it was pruned from
    kind: str  # causal | masked | classifier
    method: str  # structured | magnitude
    importance: str  # weights | activations (structured)
    sparsity: float  # the fraction asked for
    params_before: int  # parameters of the source model
    params_after: int  # parameters of the pruned model (magnitude: non-zero ones)
    n_head: list[int]  # heads per block, before and after
    ffn_dim: list[int]  # MLP channels per block, before and after
    zeroed_fraction: float | None = None  # magnitude: share of block weights that are zero
    note: str = ""  # what the method does and does not save
    recovered: dict[str, Any] | None = None  # the recovery run's summary (RunResult), when there was one

    def to_json(self) -> dict[str, Any]:
        return to_dict(self)


# --------------------------------------------------------------------------------------------------
# importance: one score per head and per MLP channel of every block


def transformer_of(model: nn.Module) -> Transformer:
    """The budgetlm backbone of an LM (itself) or of a fine-tuned classifier (its `backbone`)."""
    tf = model if isinstance(model, Transformer) else getattr(model, "backbone", None)
    if not isinstance(tf, Transformer):
        raise BudgetError("only budgetlm models can be pruned (a wrapped Hugging Face classifier cannot)")
    return tf


Scores = list[tuple[torch.Tensor, torch.Tensor]]  # per block: (head scores (H,), channel scores (I,))


def weight_scores(model: nn.Module) -> Scores:
    """L2 norm of each head's and each MLP channel's weights, per block."""
    tf = transformer_of(model)
    H, D, I = tf.cfg.n_head, tf.cfg.head_dim, tf.cfg.ffn_dim
    out = []
    with torch.no_grad():
        for b in tf.blocks:
            qkv = b.attn.qkv.weight.float().view(3, H, D, -1)  # [q; k; v] rows, head-major
            proj = b.attn.proj.weight.float().view(-1, H, D)  # (C, H, D): head h's input columns
            heads = qkv.pow(2).sum((0, 2, 3)) + proj.pow(2).sum((0, 2))  # (H,)
            w_in = b.mlp.w_in.weight.float().view(2, I, -1)  # gate rows then up rows
            chans = w_in.pow(2).sum((0, 2)) + b.mlp.w_out.weight.float().pow(2).sum(0)  # (I,)
            out.append((heads.sqrt().cpu(), chans.sqrt().cpu()))
    return out


def taylor_scores(model: nn.Module, batches: Iterator[dict[str, torch.Tensor]]) -> Scores:
    """First-order Taylor importance (Molchanov et al. 2019) of each head's output and each MLP
    channel: mean over examples of |sum over positions of activation x gradient|. The activations
    are the inputs of the attention output projection (head-major) and of the MLP down projection."""
    tf = transformer_of(model)
    H, D, I = tf.cfg.n_head, tf.cfg.head_dim, tf.cfg.ffn_dim
    dev = tf.embed.weight.device
    acc = [[torch.zeros(H, device=dev), torch.zeros(I, device=dev)] for _ in tf.blocks]
    examples = 0

    def watch(i: int, slot: int, width: tuple[int, ...]) -> Callable:
        def pre_hook(module, inputs):
            x = inputs[0]  # (B, T, H*D) or (B, T, I)
            if x.requires_grad:
                def grad_hook(g, x=x.detach()):
                    xg = (x * g).float().view(*x.shape[:2], *width)  # (B, T, H, D) or (B, T, I)
                    per_example = xg.sum(1).flatten(2).sum(-1) if len(width) == 2 else xg.sum(1)
                    acc[i][slot] += per_example.abs().sum(0)
                x.register_hook(grad_hook)
        return pre_hook

    handles = []
    for i, b in enumerate(tf.blocks):
        handles.append(b.attn.proj.register_forward_pre_hook(watch(i, 0, (H, D))))
        handles.append(b.mlp.w_out.register_forward_pre_hook(watch(i, 1, (I,))))
    was_training = model.training
    model.eval()  # no dropout: the scores of the model as it is used
    try:
        for batch in batches:
            model.zero_grad(set_to_none=True)
            _, loss = model(batch["idx"].to(dev), batch["targets"].to(dev))
            loss.backward()
            examples += batch["idx"].shape[0]
    finally:
        for h in handles:
            h.remove()
        model.zero_grad(set_to_none=True)
        model.train(was_training)
    if not examples:
        raise BudgetError("no batches to measure importance on")
    return [(a.cpu() / examples, c.cpu() / examples) for a, c in acc]


# --------------------------------------------------------------------------------------------------
# structured pruning


def keep_count(n: int, sparsity: float) -> int:
    """Units kept of n when `sparsity` of them are removed (at least one)."""
    return max(1, n - int(round(n * sparsity)))


def _top(scores: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the k highest scores, in their original order (ties: the lower index)."""
    order = sorted(range(len(scores)), key=lambda j: (-float(scores[j]), j))
    return torch.tensor(sorted(order[:k]), dtype=torch.long)


def pruned_config(cfg: ModelConfig, heads: int, channels: int) -> ModelConfig:
    """The shape after keeping `heads` heads (same size) and `channels` MLP channels per block."""
    changes: dict[str, Any] = {}
    if heads != cfg.n_head:
        changes.update(n_head=heads, head_size=cfg.head_dim)
    if channels != cfg.ffn_dim:
        changes["intermediate_size"] = channels
    return dataclasses.replace(cfg, **changes)


def structured_state(model: nn.Module, sparsity: float, scores: Scores) -> tuple[ModelConfig, dict[str, torch.Tensor], list]:
    """(pruned backbone config, pruned state dict of `model`, kept (heads, channels) per block).
    Sparsity 0 keeps everything (the same model)."""
    tf = transformer_of(model)
    cfg = tf.cfg
    H, D, I = cfg.n_head, cfg.head_dim, cfg.ffn_dim
    kh, kc = keep_count(H, sparsity), keep_count(I, sparsity)
    prefix = "" if tf is model else "backbone."
    state = {k: v.detach().clone() for k, v in model.state_dict().items()}
    kept = []
    for i, (hs, cs) in enumerate(scores):
        heads, chans = _top(hs, kh), _top(cs, kc)
        p = f"{prefix}blocks.{i}."
        qkv = state[p + "attn.qkv.weight"]
        C = qkv.shape[1]
        state[p + "attn.qkv.weight"] = qkv.view(3, H, D, C)[:, heads].reshape(3 * kh * D, C)
        state[p + "attn.proj.weight"] = state[p + "attn.proj.weight"].view(C, H, D)[:, heads].reshape(C, kh * D)
        state[p + "mlp.w_in.weight"] = state[p + "mlp.w_in.weight"].view(2, I, C)[:, chans].reshape(2 * kc, C)
        state[p + "mlp.w_out.weight"] = state[p + "mlp.w_out.weight"][:, chans].contiguous()
        kept.append((heads.tolist(), chans.tolist()))
    return pruned_config(cfg, kh, kc), state, kept


def prune_structured(model: nn.Module, meta: ck.CheckpointMeta, sparsity: float,
                     scores: Scores | None = None) -> tuple[nn.Module, ck.CheckpointMeta, list]:
    """The pruned model (built from its new meta and loaded with the kept weights), its meta and the
    kept (heads, channels) of every block. `scores` default: weight norms."""
    scores = weight_scores(model) if scores is None else scores
    cfg, state, kept = structured_state(model, sparsity, scores)
    new_meta = dataclasses.replace(meta, model_config={**meta.model_config, **to_dict(cfg)}, metrics={},
                                   val_loss=None, checksums={})
    pruned = ck.build(new_meta)
    pruned.load_state_dict(state)
    return pruned.to(transformer_of(model).embed.weight.device).eval(), new_meta, kept


# --------------------------------------------------------------------------------------------------
# magnitude pruning (baseline)


def block_linears(model: nn.Module) -> list[nn.Linear]:
    """The matrices inside the transformer blocks (what both methods prune)."""
    return [m for b in transformer_of(model).blocks for m in (b.attn.qkv, b.attn.proj, b.mlp.w_in, b.mlp.w_out)]


def prune_magnitude(model: nn.Module, sparsity: float) -> float:
    """Zero the `sparsity` smallest-magnitude block weights across all blocks (global L1
    unstructured pruning, made permanent); return the fraction of block weights now zero."""
    from torch.nn.utils import prune as torch_prune

    linears = block_linears(model)
    torch_prune.global_unstructured([(m, "weight") for m in linears], pruning_method=torch_prune.L1Unstructured,
                                    amount=float(sparsity))
    for m in linears:
        torch_prune.remove(m, "weight")  # bake the mask into the weight: a plain nn.Linear again
    zeros = sum(int((m.weight == 0).sum()) for m in linears)
    return zeros / sum(m.weight.numel() for m in linears)


# --------------------------------------------------------------------------------------------------
# a run in, a run out


def _model_kind(meta: ck.CheckpointMeta) -> str:
    if meta.is_classifier:
        return "classifier"
    return "causal" if meta.causal else "masked"


def resolve_data(cfg: PruneConfig, meta: ck.CheckpointMeta) -> str:
    """--data, else the dataset the run was trained on, if it is still there."""
    data = cfg.data or meta.data or str(meta.run_config.get("data", ""))
    if not data or not Path(data).is_dir():
        raise BudgetError(f"{cfg.model} was trained on {data or 'an unknown dataset'}, which is not here: "
                          "give --data DIR (a prepared dataset with the same tokenizer)")
    return data


def lm_batches(cfg: PruneConfig, meta: ck.CheckpointMeta) -> Iterator[dict[str, torch.Tensor]]:
    """`cfg.batches` random batches of the train split, masked the way the run was trained."""
    from budgetlm.data.loader import MaskingCollator, MaskingConfig, TokenLoader
    from budgetlm.data.shards import Dataset, check_ids
    from budgetlm.data.tokenizer import special_ids

    ds = Dataset.open(resolve_data(cfg, meta))
    vocab = int(meta.model_config["vocab_size"])
    if ds.vocab_size != vocab:
        raise BudgetError(f"the tokenizer of {ds.path} has {ds.vocab_size} tokens but the model expects {vocab}")
    tokens = ds.tokens("train")
    check_ids(tokens, vocab, f"the train split of {ds.path}")
    collator = None
    if not meta.causal:
        ids = special_ids(ds.tokenizer())
        rate = float(meta.run_config.get("mask_rate", 0.25) or 0.25)
        collator = MaskingCollator(MaskingConfig(rate=rate), ids["mask"], vocab, [v for k, v in ids.items() if k != "unk"])
    seq_len = min(cfg.seq_len or int(meta.model_config.get("max_seq_len", 256)), len(tokens) - 1)
    loader = TokenLoader(tokens, seq_len, cfg.batch_size, seed=cfg.seed, collator=collator)
    return (loader() for _ in range(cfg.batches))


def _write_run(out: Path, model: nn.Module, meta: ck.CheckpointMeta, result: PruneResult) -> None:
    """The pruned run, built in a temporary sibling and renamed into place when complete (the caller
    has checked that `out` may be replaced: `api.prune`)."""
    with fsio.atomic_dir(out, replace=True) as tmp:
        fsio.write_marker(tmp, MARKER_KIND)
        ck.save_checkpoint(tmp, meta.step, model, meta, tokenizer_path=meta.tokenizer_path or None, keep_last=1)
        fsio.atomic_write_json(tmp / "prune.json", result.to_json())


def _counts(model: nn.Module) -> tuple[int, int]:
    tf = transformer_of(model)
    return tf.cfg.n_head, tf.cfg.ffn_dim


def prune_run(cfg: PruneConfig, out: str | Path | None = None) -> PruneResult:
    """Prune `cfg.model` and write the result to `out` (default `cfg.out`) as a run every command
    loads. The caller checks `cfg` and the output folder (`check_output`)."""
    out = Path(out or cfg.out)
    model, meta = ck.load_model(cfg.model, device="cpu", which=cfg.which)
    if meta.kind not in ("lm", "classifier"):
        raise BudgetError(f"{cfg.model} holds a {meta.kind} model: only budgetlm models can be pruned")
    before = num_params_of(model)
    heads0, ffn0 = _counts(model)
    kind = _model_kind(meta)
    source = meta.path
    meta = dataclasses.replace(meta, run_config={**meta.run_config, "pruned_from": source})
    if cfg.method == "magnitude":
        zeroed = prune_magnitude(model, cfg.sparsity)
        after = sum(int((p != 0).sum()) for p in model.parameters())
        note = ("magnitude pruning zeroes weights but keeps every shape: dense kernels multiply the zeros, "
                "so it saves no time and no memory (a baseline for --method structured)")
        result = PruneResult(str(out), source, kind, "magnitude", "", cfg.sparsity, before, after,
                             [heads0, heads0], [ffn0, ffn0], zeroed_fraction=zeroed, note=note)
        _write_run(out, model, dataclasses.replace(meta, metrics={}, val_loss=None), result)
        return result
    scores = None
    if cfg.importance == "activations":
        if meta.is_classifier:
            raise BudgetError("--importance activations needs a language model run (the training objective); "
                              "prune a classifier with --importance weights")
        device = runtime.detect_device_type(cfg.device)
        scores = taylor_scores(model.to(device), lm_batches(cfg, meta))
        model.cpu()
    pruned, new_meta, _ = prune_structured(model, meta, cfg.sparsity, scores)
    heads1, ffn1 = _counts(pruned)
    note = (f"{heads1} of {heads0} heads and {ffn1} of {ffn0} MLP channels kept in each of "
            f"{len(transformer_of(pruned).blocks)} blocks: a smaller dense model")
    result = PruneResult(str(out), source, kind, "structured", cfg.importance, cfg.sparsity, before,
                         num_params_of(pruned), [heads0, heads1], [ffn0, ffn1], note=note)
    _write_run(out, pruned, new_meta, result)
    return result


def num_params_of(model: nn.Module) -> int:
    """Parameters of a budgetlm model; for LMs this equals `presets.num_params` of its config."""
    n = sum(p.numel() for p in model.parameters())
    if isinstance(model, Transformer) and model.has_lm_head:
        assert n == num_params(model.cfg), "the model disagrees with presets.num_params"
    return n


def recovery_config(cfg: PruneConfig, meta_run: str | Path, staged: str | Path) -> dict[str, Any]:
    """Settings of the recovery run (`budgetlm train --init-from` the pruned run): the source run's
    objective and data, a fresh schedule over --recover-budget."""
    meta = ck.load_meta(meta_run)
    if meta.is_classifier:
        raise BudgetError("--recover-budget continues pre-training: for a classifier, fine-tune the pruned "
                          "run's source LM instead, or run `budgetlm finetune` on a pruned LM")
    rc = meta.run_config
    settings = {"data": resolve_data(cfg, meta), "out": str(cfg.out), "init_from": str(staged),
                "objective": "causal" if meta.causal else "masked", "budget": cfg.recover_budget,
                "seed": cfg.seed, "device": cfg.device}
    for key in ("optimizer", "mask_rate", "seq_len", "batch_size", "precision"):
        if rc.get(key) not in (None, "", 0):
            settings[key] = rc[key]
    return settings
