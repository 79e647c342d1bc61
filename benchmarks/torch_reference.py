"""Optional: the same BERT4Rec training step in PyTorch (CPU), for comparison with the NumPy one.

    pip install torch                       # optional; minibert4rec itself never imports torch
    python benchmarks/torch_reference.py --config beauty --steps 10 --threads 1 --compare

The network matches minibert4rec.model (post-LN BERT blocks, learned positions,
exact-erf GELU, additive -10000 padding mask, dropout on embeddings, attention
weights and residual branches, output head on the masked rows only, logits tied to
the item table plus a bias, softmax cross-entropy averaged over the masked slots),
and it trains on the very batches ``minibert4rec.bench.synthetic_batches`` builds.
The optimizer is torch's AdamW with global-norm clipping (BERT's AdamWeightDecay
differs only in skipping the bias correction: the same work per parameter).
Times are medians of steps after a warm-up, like ``minibert4rec.bench``.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minibert4rec import bench  # noqa: E402

try:
    import torch
    import torch.nn.functional as Fn
    from torch import nn
except ImportError:                                   # pragma: no cover
    sys.exit("this optional script needs PyTorch: pip install torch")


class Block(nn.Module):
    """Post-LN encoder block: LN(x + Drop(MHA(x))), then LN(a + Drop(FFN(a)))."""

    def __init__(self, D, H, F, p_hidden, p_att):
        super().__init__()
        self.H, self.p_att = H, p_att
        self.qkv, self.out = nn.Linear(D, 3 * D), nn.Linear(D, D)
        self.ln1, self.ln2 = nn.LayerNorm(D, eps=1e-12), nn.LayerNorm(D, eps=1e-12)
        self.w1, self.w2 = nn.Linear(D, F), nn.Linear(F, D)
        self.drop = nn.Dropout(p_hidden)

    def forward(self, x, mask):                       # x: (B, T, D), mask: (B, 1, 1, T) additive
        B, T, D = x.shape
        q, k, v = self.qkv(x).view(B, T, 3, self.H, D // self.H).permute(2, 0, 3, 1, 4)
        a = Fn.scaled_dot_product_attention(q, k, v, attn_mask=mask,
                                            dropout_p=self.p_att if self.training else 0.0)
        a = self.out(a.transpose(1, 2).reshape(B, T, D))
        x = self.ln1(x + self.drop(a))
        f = self.w2(Fn.gelu(self.w1(x)))              # exact erf GELU, as the authors
        return self.ln2(x + self.drop(f))


class TorchBERT4Rec(nn.Module):
    def __init__(self, V, N, D, L, H, F, p_hidden, p_att):
        super().__init__()
        self.item = nn.Embedding(V, D, padding_idx=0)
        self.pos = nn.Embedding(N, D)
        self.ln = nn.LayerNorm(D, eps=1e-12)
        self.drop = nn.Dropout(p_hidden)
        self.blocks = nn.ModuleList(Block(D, H, F, p_hidden, p_att) for _ in range(L))
        self.head, self.head_ln = nn.Linear(D, D), nn.LayerNorm(D, eps=1e-12)
        self.out_bias = nn.Parameter(torch.zeros(V))
        for p in self.parameters():                   # std 0.02 as the authors (not truncated here)
            if p.dim() > 1:
                nn.init.normal_(p, std=0.02)

    def forward(self, ids, sel, targets):
        B, T = ids.shape
        x = self.drop(self.ln(self.item(ids) + self.pos.weight[:T]))
        mask = torch.where(ids != 0, 0.0, -10000.0)[:, None, None, :]
        for blk in self.blocks:
            x = blk(x, mask)
        h = x.reshape(B * T, -1)[sel]                 # (M, D): the masked rows only
        h = self.head_ln(Fn.gelu(self.head(h)))
        logits = h @ self.item.weight.T + self.out_bias   # (M, V), tied
        return Fn.cross_entropy(logits, targets)


def run(config="beauty", steps=10, warmup=2, seed=0, threads=None):
    """Median step time and throughput of the PyTorch step on bench's synthetic batches."""
    if threads:
        torch.set_num_threads(threads)
    torch.manual_seed(seed)
    cfg = bench.resolve_config(config)
    model = TorchBERT4Rec(cfg["vocab_size"], cfg["max_len"], cfg["hidden"], cfg["layers"],
                          cfg["heads"], 4 * cfg["hidden"], cfg["hidden_dropout"],
                          cfg["attention_dropout"])
    opt = torch.optim.AdamW(model.parameters(), lr=1e-3, eps=1e-6, weight_decay=0.01)
    batches = bench.synthetic_batches(cfg, steps, np.random.default_rng(seed))
    data = [(torch.from_numpy(b.ids), torch.from_numpy(b.sel), torch.from_numpy(b.targets))
            for b in batches]

    def step(ids, sel, targets):
        opt.zero_grad(set_to_none=True)
        loss = model(ids, sel, targets)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), 5.0)
        opt.step()
        return loss.detach().item()

    order = sorted(range(len(data)), key=lambda i: -len(data[i][1]))
    for w in range(warmup):
        step(*data[order[w % len(data)]])
    times, flops = [], []
    for (ids, sel, targets), b in zip(data, batches):
        t0 = time.perf_counter()
        step(ids, sel, targets)
        times.append(time.perf_counter() - t0)
        flops.append(sum(bench.train_step_flops(B=ids.shape[0], T=ids.shape[1], M=len(sel),
                                                D=cfg["hidden"], L=cfg["layers"], H=cfg["heads"],
                                                F=4 * cfg["hidden"], V=cfg["vocab_size"]).values()))
    Bs = [len(b.lengths) for b in batches]
    return {"config": cfg["name"], "torch": torch.__version__, "threads": torch.get_num_threads(),
            "step_ms": 1e3 * statistics.median(times),
            "train_sequences_per_s": statistics.median(B / t for B, t in zip(Bs, times)),
            "achieved_gflops": statistics.median(f / t for f, t in zip(flops, times)) / 1e9}


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--config", default="beauty", choices=sorted(bench.CONFIGS))
    ap.add_argument("--steps", type=int, default=10)
    ap.add_argument("--warmup", type=int, default=2)
    ap.add_argument("--threads", type=int, help="torch (and, with --compare, OpenBLAS) threads")
    ap.add_argument("--compare", action="store_true", help="also time minibert4rec on the same batches")
    args = ap.parse_args(argv)
    r = run(args.config, args.steps, args.warmup, threads=args.threads)
    rows = [(f"PyTorch {r['torch']} ({r['threads']} threads)", r["step_ms"],
             r["train_sequences_per_s"], r["achieved_gflops"])]
    if args.compare:
        n = bench.run_benchmark(args.config, steps=args.steps, warmup=args.warmup, profile=False,
                                inference=False, peak=False, threads=args.threads)
        rows.append((f"minibert4rec NumPy ({n['blas_threads'] or '?'} BLAS threads)",
                     n["step_ms"]["median"], n["train_sequences_per_s"], n["achieved_gflops"]))
    print(f"{args.config}: {args.steps} steps, medians")
    print(f"{'':42s} {'ms/step':>9s} {'seq/s':>8s} {'GFLOP/s':>8s}")
    for name, ms, sps, gf in rows:
        print(f"{name:42s} {ms:9.1f} {sps:8.0f} {gf:8.1f}")


if __name__ == "__main__":
    main()
