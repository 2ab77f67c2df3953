"""A tiny GPT-style character language model on "A Midsummer Night's Dream" (public domain; jobs/data/README.md):
pre-norm transformer blocks with causal scaled-dot-product attention, next-character cross-entropy, AdamW.
The workload where precision and DDP matter: its matrix multiplies dominate the step.

    python -m jobs.gpt --steps 200 [--precision bf16] [--layers 4 --heads 4 --embd 128 --block 64]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
import torch.nn.functional as F

from jobs.train import Parts, common_args, main

CORPUS = Path(__file__).parent / "data" / "midsummer.txt"


class Block(torch.nn.Module):
    def __init__(self, embd: int, heads: int) -> None:
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = torch.nn.LayerNorm(embd), torch.nn.LayerNorm(embd)
        self.qkv, self.proj = torch.nn.Linear(embd, 3 * embd), torch.nn.Linear(embd, embd)
        self.mlp = torch.nn.Sequential(torch.nn.Linear(embd, 4 * embd), torch.nn.GELU(), torch.nn.Linear(4 * embd, embd))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, length, embd = x.shape
        q, k, v = self.qkv(self.norm1(x)).split(embd, dim=2)
        q, k, v = (t.view(batch, length, self.heads, embd // self.heads).transpose(1, 2) for t in (q, k, v))
        attended = F.scaled_dot_product_attention(q, k, v, is_causal=True)
        x = x + self.proj(attended.transpose(1, 2).reshape(batch, length, embd))
        return x + self.mlp(self.norm2(x))


class CharGPT(torch.nn.Module):
    def __init__(self, vocab: int, block: int, layers: int, heads: int, embd: int) -> None:
        super().__init__()
        self.tokens, self.positions = torch.nn.Embedding(vocab, embd), torch.nn.Embedding(block, embd)
        self.blocks = torch.nn.Sequential(*(Block(embd, heads) for _ in range(layers)))
        self.norm, self.head = torch.nn.LayerNorm(embd), torch.nn.Linear(embd, vocab, bias=False)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        positions = torch.arange(idx.shape[1], device=idx.device)
        return self.head(self.norm(self.blocks(self.tokens(idx) + self.positions(positions))))


def encode(text: str) -> tuple[torch.Tensor, list[str]]:
    alphabet = sorted(set(text))
    index = {c: i for i, c in enumerate(alphabet)}
    return torch.tensor([index[c] for c in text], dtype=torch.long), alphabet


def build(args: argparse.Namespace) -> Parts:
    if args.embd % args.heads:
        raise SystemExit(f"--embd {args.embd} is not a multiple of --heads {args.heads}")
    data, alphabet = encode(CORPUS.read_text(encoding="utf-8"))
    model = CharGPT(len(alphabet), args.block, args.layers, args.heads, args.embd)

    def batch(generator: torch.Generator, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        starts = torch.randint(0, len(data) - args.block - 1, (args.batch_size,), generator=generator)
        window = torch.stack([data[s:s + args.block + 1] for s in starts.tolist()])
        return window[:, :-1].to(device), window[:, 1:].to(device)

    def loss(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        return F.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), targets.reshape(-1))

    return Parts(model, batch, loss, lambda params: torch.optim.AdamW(params, lr=args.lr))


def parser() -> argparse.ArgumentParser:
    p = common_args(__doc__.splitlines()[0])
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--block", type=int, default=64, help="context length in characters")
    p.add_argument("--layers", type=int, default=4)
    p.add_argument("--heads", type=int, default=4)
    p.add_argument("--embd", type=int, default=128)
    return p


if __name__ == "__main__":
    main(build, parser())
