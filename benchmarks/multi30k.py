"""Multi30k English -> German from nothing, at equal CPU time: budgetlm against transformers' Seq2SeqTrainer.

Both arms start from the raw text (train.{en,de}: 29,000 pairs; val.{en,de} chooses settings; the
score is on test_2016_flickr) and get the same wall-clock budget on the same machine, one after the
other; everything before decoding the test set counts (tokenizer, pre-training, fine-tuning).

- budgetlm: `prepare` (one BPE vocabulary for both languages), `train` (a causal LM on the English
  and German text, a share `--pretrain-share` of the budget), `finetune --task seq2seq` (the rest),
  `eval --beams 4`.
- peer: a `tokenizers` BPE vocabulary of the same size on the same text, a Marian-shaped
  encoder-decoder (MarianMTModel, tied embeddings) trained from scratch by `Seq2SeqTrainer`: the width
  whose parameter count is closest to budgetlm's model, AdamW, linear warm-up and decay ending at the
  budget (the step count is estimated from a timed probe inside the budget), label smoothing 0.1
  (Vaswani et al. 2017), beam 4.

Corpus BLEU and chrF by sacrebleu's defaults on detokenized text, for both.

    pip install --target /tmp/hfdeps --no-deps accelerate     # Trainer needs it; not a budgetlm dependency
    PYTHONPATH=/tmp/hfdeps python benchmarks/multi30k.py --data ../shared/data/multi30k --work /tmp/mt --budget 20m
"""

from __future__ import annotations

import argparse
import json
import shutil
import time
from pathlib import Path

from common import budgetlm, machine, write_json

SPLITS = {"train": "train", "val": "val", "test": "test_2016_flickr"}


def lines(data: Path, split: str, lang: str) -> list[str]:
    return (data / f"{SPLITS[split]}.{lang}").read_text(encoding="utf-8").splitlines()


def budgetlm_arm(data: Path, work: Path, budget_s: float, vocab: int, share: float, seq_len: int, extra: list[str]) -> dict:
    """prepare -> train -> finetune --task seq2seq inside the budget; then eval on the test split."""
    work.mkdir(parents=True, exist_ok=True)
    for split in SPLITS:
        for lang in ("en", "de"):
            shutil.copy(data / f"{SPLITS[split]}.{lang}", work / f"{split}.{lang}.txt")
    t0 = time.perf_counter()
    budgetlm("prepare", str(work / "train.en.txt"), str(work / "train.de.txt"), "--val", str(work / "val.en.txt"),
             str(work / "val.de.txt"), "--out", str(work / "data"), "--vocab-size", str(vocab), "--overwrite")
    pre_s = int(share * budget_s - (time.perf_counter() - t0))
    pre = budgetlm("train", "--data", str(work / "data"), "--out", str(work / "lm"), "--budget", f"{pre_s}s",
                   "--seq-len", str(seq_len), *extra)
    ft_s = int(budget_s - (time.perf_counter() - t0))
    ft = budgetlm("finetune", "--task", "seq2seq", "--model", str(work / "lm"), "--train", str(work / "train.en.txt"),
                  "--train-target", str(work / "train.de.txt"), "--val", str(work / "val.en.txt"),
                  "--val-target", str(work / "val.de.txt"), "--out", str(work / "mt"), "--budget", f"{ft_s}s",
                  "--lr", "1e-3", "--patience", "0", "--eval-every", "1000000")  # one validation, at the end
    used = time.perf_counter() - t0
    t1 = time.perf_counter()
    ev = budgetlm("eval", "--model", str(work / "mt"), "--text", str(work / "test.en.txt"), str(work / "test.de.txt"),
                  "--beams", "4")
    return {"bleu": ev["bleu"], "chrf": ev["chrf"], "budget_used_s": round(used, 1), "decode_s": round(time.perf_counter() - t1, 1),
            "model": pre["model"], "params": pre.get("params"), "pretrain_s": pre_s, "pretrain_tokens": pre["tokens"],
            "finetune_s": ft_s, "finetune_steps": ft["steps"], "val_bleu": ft["bleu"], "samples": ev["samples"][:3]}


def marian(vocab: int, width: int, pad: int, eos: int):
    from transformers import MarianConfig, MarianMTModel

    cfg = MarianConfig(vocab_size=vocab, d_model=width, encoder_layers=3, decoder_layers=3,
                       encoder_attention_heads=max(1, width // 64), decoder_attention_heads=max(1, width // 64),
                       encoder_ffn_dim=4 * width, decoder_ffn_dim=4 * width, max_position_embeddings=256,
                       pad_token_id=pad, eos_token_id=eos, decoder_start_token_id=pad, forced_eos_token_id=eos,
                       share_encoder_decoder_embeddings=True, tie_word_embeddings=True, scale_embedding=True,
                       dropout=0.1)
    return MarianMTModel(cfg)


def peer_arm(data: Path, work: Path, budget_s: float, vocab: int, target_params: int | None, batch: int) -> dict:
    import torch
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers
    from transformers import (DataCollatorForSeq2Seq, PreTrainedTokenizerFast, Seq2SeqTrainer,
                              Seq2SeqTrainingArguments, TrainerCallback)

    t0 = time.perf_counter()
    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer, tok.decoder = pre_tokenizers.ByteLevel(add_prefix_space=False), decoders.ByteLevel()
    text = lines(data, "train", "en") + lines(data, "train", "de")
    tok.train_from_iterator(text, trainers.BpeTrainer(vocab_size=vocab, special_tokens=["<pad>", "</s>", "<unk>"],
                                                     initial_alphabet=pre_tokenizers.ByteLevel.alphabet()))
    fast = PreTrainedTokenizerFast(tokenizer_object=tok, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    pad, eos = fast.pad_token_id, fast.eos_token_id
    widths = {w: sum(p.numel() for p in marian(len(fast), w, pad, eos).parameters()) for w in (96, 128, 192, 256)}
    width = min(widths, key=lambda w: abs(widths[w] - (target_params or widths[256])))
    model = marian(len(fast), width, pad, eos)

    def encode(split):
        src = fast(lines(data, split, "en"), truncation=True, max_length=128)["input_ids"]
        tgt = fast(lines(data, split, "de"), truncation=True, max_length=128)["input_ids"]
        return [{"input_ids": s + [eos], "labels": t + [eos]} for s, t in zip(src, tgt)]

    train = encode("train")
    collator = DataCollatorForSeq2Seq(fast, model=model, padding=True)

    class Deadline(TrainerCallback):
        def __init__(self, end):
            self.end = end

        def on_step_end(self, args, state, control, **kw):
            if time.perf_counter() >= self.end:
                control.should_training_stop = True

    def trainer(max_steps, end):
        args = Seq2SeqTrainingArguments(
            output_dir=str(work / "peer"), per_device_train_batch_size=batch, learning_rate=7e-4, warmup_steps=max(1, max_steps // 20),
            lr_scheduler_type="linear", max_steps=max_steps, label_smoothing_factor=0.1, weight_decay=0.01,
            logging_steps=50, save_strategy="no", report_to=[], use_cpu=True, dataloader_num_workers=0,
            disable_tqdm=True, seed=0)
        return Seq2SeqTrainer(model=model, args=args, train_dataset=train, data_collator=collator,
                              callbacks=[Deadline(end)])

    probe = time.perf_counter()
    trainer(20, probe + 120).train()  # timed probe: the step rate sets the schedule's length
    step_s = (time.perf_counter() - probe) / 20
    remaining = budget_s - (time.perf_counter() - t0)
    steps = max(1, int(remaining / step_s))
    trainer(steps, t0 + budget_s).train()
    used = time.perf_counter() - t0
    t1 = time.perf_counter()
    model.eval()
    src = lines(data, "test", "en")
    hyps = []
    with torch.no_grad():
        for i in range(0, len(src), 64):
            enc = fast([s for s in src[i:i + 64]], return_tensors="pt", padding=True, truncation=True, max_length=128)
            enc["input_ids"] = torch.cat([enc["input_ids"], torch.full((len(enc["input_ids"]), 1), pad)], 1)
            enc["attention_mask"] = torch.cat([enc["attention_mask"], torch.zeros(len(enc["input_ids"]), 1, dtype=torch.long)], 1)
            lengths = enc["attention_mask"].sum(1)
            enc["input_ids"][torch.arange(len(lengths)), lengths] = eos  # each source ends with </s>, as in training
            enc["attention_mask"][torch.arange(len(lengths)), lengths] = 1
            out = model.generate(**enc, num_beams=4, max_new_tokens=64)
            hyps += [h.strip() for h in fast.batch_decode(out, skip_special_tokens=True)]
    import sacrebleu

    ref = lines(data, "test", "de")
    return {"bleu": sacrebleu.corpus_bleu(hyps, [ref]).score, "chrf": sacrebleu.corpus_chrf(hyps, [ref]).score,
            "budget_used_s": round(used, 1), "decode_s": round(time.perf_counter() - t1, 1), "width": width,
            "params": widths[width], "steps": steps, "step_s": round(step_s, 3), "samples": hyps[:3]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--data", required=True, help="multi30k folder: train/val/test_2016_flickr .en and .de")
    ap.add_argument("--work", required=True, help="scratch folder")
    ap.add_argument("--budget", default="20m", help="wall-clock budget per arm (90s, 20m)")
    ap.add_argument("--vocab-size", type=int, default=8000, help="BPE vocabulary of both arms")
    ap.add_argument("--pretrain-share", type=float, default=0.4, help="budgetlm: share of the budget for pre-training")
    ap.add_argument("--seq-len", type=int, default=128, help="budgetlm: pre-training context (pairs are packed into it)")
    ap.add_argument("--budgetlm-args", default="", help="extra `budgetlm train` flags")
    ap.add_argument("--batch-size", type=int, default=64, help="peer: pairs per step")
    ap.add_argument("--arms", nargs="+", default=["budgetlm", "peer"], choices=["budgetlm", "peer"])
    ap.add_argument("--out", default="", help="write the results here (JSON)")
    args = ap.parse_args()
    from budgetlm.config import parse_duration

    budget_s, data, work = parse_duration(args.budget), Path(args.data), Path(args.work)
    shutil.rmtree(work, ignore_errors=True)
    result: dict = {"budget_s": budget_s, "vocab_size": args.vocab_size, **machine()}
    if "budgetlm" in args.arms:
        result["budgetlm"] = budgetlm_arm(data, work / "budgetlm", budget_s, args.vocab_size, args.pretrain_share,
                                          args.seq_len, args.budgetlm_args.split())
        print(json.dumps(result["budgetlm"]), flush=True)
    if "peer" in args.arms:
        target = (result.get("budgetlm") or {}).get("params")
        result["peer"] = peer_arm(data, work / "peer", budget_s, args.vocab_size, target, args.batch_size)
        print(json.dumps(result["peer"]), flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
