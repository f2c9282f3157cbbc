"""Train the bundled tavern-world LM from scratch and write ``assets/demo-lm/``.

Every batch is drawn from ``random.Random(seed * 1_000_003 + step)``, so a run is deterministic for a given seed
(on one thread). Writes ``config.json``, ``generation_config.json``, ``model.safetensors``, the tokenizer files and
``train_log.json`` (loss curve, settings, seconds).

Example (the bundled weights; about 7 minutes on one CPU core):

    OMP_NUM_THREADS=1 python -m dsas_transformers.demo.train

Quick check that everything runs (seconds, weights not worth keeping):

    python -m dsas_transformers.demo.train --steps 20 --out /tmp/demo-lm
"""

from __future__ import annotations

import argparse
import json
import math
import random
import time
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from tqdm.auto import tqdm

from dsas_core import DsasError

from .model import build_model, build_tokenizer, demo_lm_dir
from .world import corpus, sample_doc


def batch(tokenizer: Any, texts: list[str], device: str = "cpu") -> dict[str, Tensor]:
    """``<bos> text <eos>`` right-padded; labels are -100 on padding. Shapes (B, N)."""
    ids = [row + [tokenizer.eos_token_id] for row in tokenizer(texts)["input_ids"]]
    n = max(len(r) for r in ids)
    input_ids = torch.tensor([r + [tokenizer.pad_token_id] * (n - len(r)) for r in ids], device=device)
    mask = torch.tensor([[1] * len(r) + [0] * (n - len(r)) for r in ids], device=device)
    return {"input_ids": input_ids, "attention_mask": mask, "labels": input_ids.masked_fill(mask == 0, -100)}


def lr_at(step: int, total: int, base: float, warmup: int = 100) -> float:
    """Linear warm-up, then cosine decay to 10% of ``base``."""
    if step < warmup:
        return base * (step + 1) / warmup
    p = (step - warmup) / max(1, total - warmup)
    return base * (0.1 + 0.45 * (1 + math.cos(math.pi * p)))


@torch.no_grad()
def held_out_loss(model: torch.nn.Module, tokenizer: Any, seed: int, n: int = 512) -> float:
    """Mean token loss on ``n`` documents the run never trains on."""
    model.eval()
    texts = [d.text for d in corpus(n, seed=10_000 + seed)]
    loss = float(model(**batch(tokenizer, texts)).loss)
    model.train()
    return loss


def train(out: Path, steps: int = 2000, batch_size: int = 64, lr: float = 3e-3, seed: int = 0,
          threads: int = 1) -> dict[str, Any]:
    """Train and save the model and tokenizer to ``out``; returns the training log."""
    if steps < 1 or batch_size < 1:
        raise DsasError(f"--steps and --batch-size must be >= 1, got {steps} and {batch_size}.")
    torch.set_num_threads(threads)
    tokenizer = build_tokenizer()
    model = build_model(len(tokenizer), seed=seed).train()
    opt = torch.optim.AdamW(model.parameters(), lr=lr, betas=(0.9, 0.98), weight_decay=0.01)
    log: list[dict[str, float]] = []
    start = time.perf_counter()
    bar = tqdm(range(steps), desc="training the demo LM")
    for step in bar:
        rng = random.Random(seed * 1_000_003 + step)
        texts = [sample_doc(rng).text for _ in range(batch_size)]
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, lr)
        loss = model(**batch(tokenizer, texts)).loss
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        if step % 50 == 0 or step == steps - 1:
            bar.set_postfix(loss=f"{loss.item():.3f}")
            log.append({"step": step, "loss": round(loss.item(), 4)})
    seconds = time.perf_counter() - start
    model.eval()
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out)
    tokenizer.save_pretrained(out)
    meta = {"steps": steps, "batch_size": batch_size, "lr": lr, "seed": seed, "threads": threads,
            "seconds": round(seconds, 1), "held_out_loss": round(held_out_loss(model, tokenizer, seed), 4),
            "parameters": sum(p.numel() for p in model.parameters()), "loss_curve": log}
    (out / "train_log.json").write_text(json.dumps(meta, indent=1) + "\n")
    return meta


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m dsas_transformers.demo.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", type=Path, default=demo_lm_dir(), help="output folder (default: assets/demo-lm)")
    p.add_argument("--steps", type=int, default=2000)
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=1, help="torch threads (1 keeps runs deterministic)")
    args = p.parse_args(argv)
    meta = train(args.out, args.steps, args.batch_size, args.lr, args.seed, args.threads)
    print(f"trained {meta['parameters']:,} parameters in {meta['seconds']:.0f} s; held-out loss "
          f"{meta['held_out_loss']:.3f}; wrote {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
