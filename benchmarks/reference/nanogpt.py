"""A nanoGPT-style PyTorch reference for the baby Shakespeare-char benchmark.

Written for kzoo from nanoGPT's published design (model.py / train.py, CPU "baby" command):
pre-LayerNorm GPT without biases, tied token embedding and output head, N(0, 0.02) init with
residual projections scaled by 1/sqrt(2 * layers), exact GELU, PyTorch AdamW (decay on every
tensor of rank >= 2, embeddings included, as nanoGPT; `--no-embedding-decay` exempts the
embeddings, as kzoo's recipe does), nanoGPT's `get_lr` (linear warmup then cosine to min_lr),
gradient clipping at 1.0, and `get_batch` (random windows with replacement).

It needs PyTorch, which kzoo does not depend on: `pretrain_shakespeare.py --torch-python P`
runs this file with the interpreter P on the same token ids (written as .npy), so the table
shows kzoo, keras_hub and this reference side by side in one run.

    python benchmarks/reference/nanogpt.py --train train.npy --val val.npy --vocab 67
"""

from __future__ import annotations

import argparse
import json
import math
import time

import numpy as np
import torch
from torch import nn
from torch.nn import functional as F


class Block(nn.Module):
    def __init__(self, dim: int, heads: int):
        super().__init__()
        self.heads = heads
        self.ln_1 = nn.LayerNorm(dim, bias=False)
        self.c_attn = nn.Linear(dim, 3 * dim, bias=False)
        self.attn_proj = nn.Linear(dim, dim, bias=False)
        self.ln_2 = nn.LayerNorm(dim, bias=False)
        self.c_fc = nn.Linear(dim, 4 * dim, bias=False)
        self.mlp_proj = nn.Linear(4 * dim, dim, bias=False)

    def forward(self, x):
        b, t, c = x.shape
        q, k, v = self.c_attn(self.ln_1(x)).split(c, dim=2)
        # (batch, heads, seq, head_dim)
        q, k, v = (z.view(b, t, self.heads, c // self.heads).transpose(1, 2) for z in (q, k, v))
        y = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.attn_proj(y.transpose(1, 2).contiguous().view(b, t, c))
        return x + self.mlp_proj(F.gelu(self.c_fc(self.ln_2(x))))


class GPT(nn.Module):
    def __init__(self, vocab: int, block: int, layers: int, heads: int, dim: int):
        super().__init__()
        self.wte = nn.Embedding(vocab, dim)
        self.wpe = nn.Embedding(block, dim)
        self.blocks = nn.ModuleList(Block(dim, heads) for _ in range(layers))
        self.ln_f = nn.LayerNorm(dim, bias=False)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.wte.weight  # tied, as GPT-2
        for module in self.modules():
            if isinstance(module, nn.Linear | nn.Embedding):
                nn.init.normal_(module.weight, 0.0, 0.02)
        for name, p in self.named_parameters():
            if name.endswith("proj.weight"):
                nn.init.normal_(p, 0.0, 0.02 / math.sqrt(2 * layers))

    def forward(self, idx, targets):
        pos = torch.arange(idx.shape[1], device=idx.device)
        x = self.wte(idx) + self.wpe(pos)
        for block in self.blocks:
            x = block(x)
        logits = self.lm_head(self.ln_f(x))
        return F.cross_entropy(logits.view(-1, logits.size(-1)), targets.view(-1))


def get_lr(it, lr, min_lr, warmup, decay_iters):
    if it < warmup:
        return lr * (it + 1) / (warmup + 1)
    if it > decay_iters:
        return min_lr
    ratio = (it - warmup) / (decay_iters - warmup)
    return min_lr + 0.5 * (1.0 + math.cos(math.pi * ratio)) * (lr - min_lr)


def get_batch(data, block, batch, gen):
    ix = torch.randint(len(data) - block, (batch,), generator=gen)
    x = torch.stack([data[i:i + block] for i in ix])
    y = torch.stack([data[i + 1:i + 1 + block] for i in ix])
    return x, y


@torch.no_grad()
def estimate_loss(model, splits, block, batch, iters, gen):
    """nanoGPT's estimate_loss: the mean loss of `iters` random batches of each split."""
    model.eval()
    out = {name: float(np.mean([model(*get_batch(data, block, batch, gen)).item()
                                for _ in range(iters)])) for name, data in splits.items()}
    model.train()
    return out


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", required=True, help=".npy of train token ids")
    parser.add_argument("--val", required=True, help=".npy of validation token ids")
    parser.add_argument("--vocab", type=int, required=True)
    parser.add_argument("--steps", type=int, default=2000)
    parser.add_argument("--val-batches", type=int, default=200)
    parser.add_argument("--seed", type=int, default=1337)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--no-embedding-decay", action="store_true")
    parser.add_argument("--eval-interval", type=int, default=0,
                        help="as nanoGPT's train.py: every N steps estimate train and val loss "
                             "over --eval-iters batches each, and save a checkpoint (model and "
                             "optimizer) to --out-dir when val improves; 0: no evaluation")
    parser.add_argument("--eval-iters", type=int, default=200)
    parser.add_argument("--out-dir", default=None)
    parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32",
                        help="bfloat16: the forward pass under torch.autocast (nanoGPT's "
                             "dtype='bfloat16'); weights and optimizer stay float32")
    args = parser.parse_args()

    block, batch, lr, min_lr, warmup = 64, 12, 1e-3, 1e-4, 100
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    train = torch.from_numpy(np.load(args.train).astype(np.int64))
    val = torch.from_numpy(np.load(args.val).astype(np.int64))
    model = GPT(args.vocab, block, layers=4, heads=4, dim=128)
    params = [p for p in model.parameters() if p.requires_grad]
    embeddings = {id(model.wte.weight), id(model.wpe.weight)} if args.no_embedding_decay else set()
    decay = [p for p in params if p.dim() >= 2 and id(p) not in embeddings]
    no_decay = [p for p in params if p.dim() < 2 or id(p) in embeddings]
    optimizer = torch.optim.AdamW(
        [{"params": decay, "weight_decay": 0.1}, {"params": no_decay, "weight_decay": 0.0}],
        lr=lr, betas=(0.9, 0.99),
    )
    gen = torch.Generator().manual_seed(args.seed)
    autocast = torch.autocast("cpu", dtype=torch.bfloat16, enabled=args.dtype == "bfloat16")
    model.train()
    times, best_val, evals = [], float("inf"), []
    for it in range(args.steps):
        if args.eval_interval and it % args.eval_interval == 0:
            losses = estimate_loss(model, {"train": train, "val": val}, block, batch,
                                   args.eval_iters, gen)
            evals.append({"step": it, **losses})
            if it > 0 and losses["val"] < best_val and args.out_dir:
                best_val = losses["val"]
                torch.save({"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                            "iter_num": it, "best_val_loss": best_val},
                           f"{args.out_dir}/ckpt.pt")
        start = time.perf_counter()
        for group in optimizer.param_groups:
            group["lr"] = get_lr(it, lr, min_lr, warmup, args.steps)
        x, y = get_batch(train, block, batch, gen)
        with autocast:
            loss = model(x, y)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        optimizer.step()
        times.append(time.perf_counter() - start)
    model.eval()
    val_gen = torch.Generator().manual_seed(args.seed + 1)
    with torch.no_grad(), autocast:
        losses = [model(*get_batch(val, block, batch, val_gen)).item()
                  for _ in range(args.val_batches)]
    steady = times[10:]  # skip the first steps (allocator warm-up), as kzoo's meter does
    print(json.dumps({
        "model": "nanoGPT-style PyTorch" + (" (no embedding decay)" if embeddings else ""),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "dtype": args.dtype,
        "steps": args.steps,
        "params": sum(p.numel() for p in params),
        "tokens_per_s": len(steady) * block * batch / sum(steady),
        "train_loss": float(loss.item()),
        "val_loss": float(np.mean(losses)),
        # nanoGPT's CPU command estimates with 20 batches: this is that estimate's spread.
        "val_loss_sd_20_batches": float(np.std(losses, ddof=1) / math.sqrt(20)),
        "val_batches": args.val_batches,
        "fit_wall_s": sum(times),
        "evaluations": evals,
    }))


if __name__ == "__main__":
    main()
