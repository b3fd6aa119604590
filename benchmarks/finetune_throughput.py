"""Fine-tuning throughput: `budgetlm finetune` against transformers' `Trainer`, same model, data,
sequence length and batch, examples per second of training, measured one after the other.

Two models:
- `budgetlm`: a budgetlm masked run (`--mlm RUN`), fine-tuned by budgetlm; the peer fine-tunes its
  export (`budgetlm export`: ModernBertForSequenceClassification with the same weights) with Trainer;
- `hf-bert`: a BERT folder (BertForMaskedLM, `--bert-width` x `--bert-layers`, random weights and a
  WordPiece tokenizer trained on the data) fine-tuned by budgetlm (`finetune --model FOLDER`) and by
  Trainer.
Both sides: AdamW, lr 1e-4, batch `--batch`, `--max-len` tokens, batches of similar length
(budgetlm's default; Trainer's `train_sampling_strategy="group_by_length"`), dynamic padding, the same
precision (`--precision`: fp32, or bf16 autocast: budgetlm `--precision bf16`, Trainer `bf16=True`), the same
dropout (`--dropout`, 0 by default), no validation during
the timed part. Examples/s = steps x batch / training seconds (budgetlm: the loop's clock; Trainer:
its `train_runtime`); `--repeats` pairs per model, alternating which side runs first, and the median
of their ratios.

    pip install --target /tmp/hfdeps --no-deps accelerate
    PYTHONPATH=/tmp/hfdeps python benchmarks/finetune_throughput.py --mlm RUN --train ../shared/data/sst2/train.tsv \\
        --work /tmp/ftt --examples 6400
"""

from __future__ import annotations

import argparse
import csv
import json
import shutil
import statistics
from pathlib import Path

from common import budgetlm, machine, matmul_peak, write_json

from budgetlm.hf import dropout_overrides


def subset(train: Path, out: Path, n: int) -> tuple[Path, list[str], list[int]]:
    rows = list(csv.DictReader(train.open(encoding="utf-8"), delimiter="\t"))[:n]
    with out.open("w", encoding="utf-8") as fh:
        fh.write("sentence\tlabel\n" + "".join(f"{r['sentence']}\t{r['label']}\n" for r in rows))
    return out, [r["sentence"] for r in rows], [int(r["label"]) for r in rows]


def ours(model: str, data: Path, out: Path, args) -> dict:
    res = budgetlm("finetune", "--model", model, "--train", str(data), "--val", str(data), "--out", str(out),
                   "--text-column", "sentence", "--epochs", "1", "--batch-size", str(args.batch), "--lr", "1e-4",
                   "--max-len", str(args.max_len), "--eval-every", "1000000", "--patience", "0",
                   "--precision", args.precision, "--device", "cpu", "--dropout", str(args.dropout))
    return {"steps": res["steps"], "seconds": res["train_seconds"],
            "examples_per_s": round(res["steps"] * args.batch / res["train_seconds"], 1)}


def theirs(folder: Path, texts: list[str], labels: list[int], work: Path, args) -> dict:
    from transformers import (AutoConfig, AutoModelForSequenceClassification, AutoTokenizer, DataCollatorWithPadding, Trainer,
                              TrainingArguments)

    tok = AutoTokenizer.from_pretrained(folder)
    config = AutoConfig.from_pretrained(folder, num_labels=2)
    config.update(dropout_overrides(config, args.dropout))  # the fields budgetlm's --dropout sets
    model = AutoModelForSequenceClassification.from_pretrained(folder, config=config)
    enc = tok(texts, truncation=True, max_length=args.max_len)
    data = [{"input_ids": i, "attention_mask": m, "labels": y} for i, m, y in zip(enc["input_ids"], enc["attention_mask"], labels)]
    targs = TrainingArguments(output_dir=str(work), per_device_train_batch_size=args.batch, learning_rate=1e-4,
                              num_train_epochs=1, train_sampling_strategy="group_by_length", save_strategy="no", report_to=[],
                              use_cpu=True, bf16=args.precision == "bf16", disable_tqdm=True, logging_steps=10**6, seed=0, dataloader_num_workers=0)
    out = Trainer(model=model, args=targs, train_dataset=data, data_collator=DataCollatorWithPadding(tok)).train()
    steps, secs = out.global_step, out.metrics["train_runtime"]
    return {"steps": steps, "seconds": round(secs, 2), "examples_per_s": round(steps * args.batch / secs, 1)}


def step_profile(mlm: str, args) -> dict:
    """Where budgetlm's fine-tuning step goes: torch.profiler over 5 steps of (batch, 24 tokens), the
    share of the step in GEMMs (aten::mm/addmm) and their rate, against a 1024^3 matmul of the same
    precision measured in the same process: a step already at the GEMM peak cannot be made much faster
    by the loop."""
    import torch
    from torch.profiler import profile

    from budgetlm import runtime
    from budgetlm.models.heads import SequenceClassifier
    from budgetlm.training.checkpoint import load_model

    torch.manual_seed(0)
    rt = runtime.init_runtime("cpu", args.precision)
    lm, _ = load_model(mlm, device="cpu")
    # prepared as `finetune` prepares it (on a bf16 CPU this decides the attention precision)
    model = runtime.prepare_training(SequenceClassifier.from_lm(lm, 2, dropout=args.dropout), rt, compile="off").model
    model.train()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-4, fused=True)
    idx, y = torch.randint(5, 1000, (args.batch, 24)), torch.randint(0, 2, (args.batch,))
    mask = torch.ones_like(idx)

    def step():
        with runtime.autocast(rt):
            loss = model(idx, labels=y, attention_mask=mask)[1]
        loss.backward()
        opt.step()
        opt.zero_grad(set_to_none=True)

    for _ in range(3):
        step()
    with profile() as prof:
        for _ in range(5):
            step()
    events = prof.key_averages()
    total = sum(e.self_cpu_time_total for e in events)
    mm = sum(e.self_cpu_time_total for e in events if e.key in ("aten::mm", "aten::addmm"))
    attn = sum(e.self_cpu_time_total for e in events if "scaled_dot_product" in e.key)
    # GEMM FLOPs: 6 x tokens x the weights used at every token (the pooled head runs once per example)
    n = sum(p.numel() for name, p in model.named_parameters() if p.ndim == 2 and name.startswith("backbone.blocks"))
    flops = 5 * 6 * n * idx.numel()
    return {"gemm_share": round(mm / total, 3), "attention_share": round(attn / total, 3),
            "attention_fp32": runtime.attention_fp32(rt), "gemm_gflops": round(flops / (mm / 1e6) / 1e9, 1),
            "matmul_peak_gflops": round(matmul_peak(dtype=rt.dtype) / 1e9, 1)}


def bert_folder(texts: list[str], folder: Path, width: int, layers: int) -> Path:
    from tokenizers import Tokenizer, models, normalizers, pre_tokenizers, processors, trainers
    from transformers import BertConfig, BertForMaskedLM, PreTrainedTokenizerFast

    tok = Tokenizer(models.WordPiece(unk_token="[UNK]"))
    tok.normalizer, tok.pre_tokenizer = normalizers.BertNormalizer(), pre_tokenizers.BertPreTokenizer()
    tok.train_from_iterator(texts, trainers.WordPieceTrainer(vocab_size=8192, special_tokens=[
        "[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]))
    tok.post_processor = processors.TemplateProcessing(single="[CLS] $A [SEP]", pair="[CLS] $A [SEP] $B:1 [SEP]:1",
                                                       special_tokens=[("[CLS]", 2), ("[SEP]", 3)])
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]", pad_token="[PAD]", cls_token="[CLS]",
                                   sep_token="[SEP]", mask_token="[MASK]")
    cfg = BertConfig(vocab_size=len(fast), hidden_size=width, num_hidden_layers=layers,
                     num_attention_heads=max(1, width // 64), intermediate_size=4 * width, pad_token_id=0)
    BertForMaskedLM(cfg).save_pretrained(folder)
    fast.save_pretrained(folder)
    return folder


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--mlm", required=True, help="a budgetlm masked run")
    ap.add_argument("--train", required=True, help="SST-2 train.tsv (sentence, label)")
    ap.add_argument("--work", required=True)
    ap.add_argument("--examples", type=int, default=6400, help="training examples (one epoch)")
    ap.add_argument("--batch", type=int, default=32)
    ap.add_argument("--max-len", type=int, default=64)
    ap.add_argument("--bert-width", type=int, default=256)
    ap.add_argument("--bert-layers", type=int, default=4)
    ap.add_argument("--dropout", type=float, default=0.0,
                    help="both sides; 0 (default) makes the two sides compute the same function, since the "
                         "libraries place dropout differently")
    ap.add_argument("--precision", choices=["fp32", "bf16"], default="fp32",
                    help="both sides: fp32, or bf16 autocast (budgetlm --precision bf16, Trainer bf16=True)")
    ap.add_argument("--repeats", type=int, default=3, help="pairs of runs per model, alternating which side runs first")
    ap.add_argument("--out", default="")
    args = ap.parse_args()
    work = Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    work.mkdir(parents=True)
    data, texts, labels = subset(Path(args.train), work / "train.tsv", args.examples)
    budgetlm("export", "--model", args.mlm, "--out", str(work / "mlm-hf"))
    bert = bert_folder(texts, work / "bert", args.bert_width, args.bert_layers)
    result = {"examples": args.examples, "batch": args.batch, "max_len": args.max_len, "precision": args.precision,
              "dropout": args.dropout, **machine()}
    for name, ours_model, hf_folder in [("budgetlm", args.mlm, work / "mlm-hf"), ("hf-bert", str(bert), bert)]:
        runs = []
        for r in range(args.repeats):  # alternating which side goes first: a slow spell of the VM hits both
            if r % 2 == 0:
                a = ours(ours_model, data, work / f"ft-{name}-{r}", args)
                b = theirs(hf_folder, texts, labels, work / f"trainer-{name}-{r}", args)
            else:
                b = theirs(hf_folder, texts, labels, work / f"trainer-{name}-{r}", args)
                a = ours(ours_model, data, work / f"ft-{name}-{r}", args)
            runs.append({"budgetlm": a, "trainer": b, "ratio": round(a["examples_per_s"] / b["examples_per_s"], 2)})
            print(json.dumps({name: runs[-1]}), flush=True)
        result[name] = {"runs": runs, "median_ratio": statistics.median(x["ratio"] for x in runs)}
        print(json.dumps({name: {"median_ratio": result[name]["median_ratio"]}}), flush=True)
    result["budgetlm_step"] = step_profile(args.mlm, args)
    print(json.dumps({"budgetlm_step": result["budgetlm_step"]}), flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
