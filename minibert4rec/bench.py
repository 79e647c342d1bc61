"""Speed: where a BERT4Rec training step spends its time, and how close it gets to the matmul peak.

    result = run_benchmark("beauty", steps=20)      # a dict (JSON-ready)
    print(format_report(result))                     # aligned tables

What is measured (all on synthetic batches of the configuration's shape):

- training throughput: one step = ``model.loss_and_grads`` + ``AdamWeightDecay.step``,
  timed with ``time.perf_counter`` after ``warmup`` steps; sequences/s and
  tokens/s (real, non-padding positions) are MEDIANS of the per-step rates;
- inference throughput: ``model.score_next`` on batches of user histories, i.e.
  the encoder plus the scores of every vocabulary id at the [MASK] position,
  exactly what evaluation does (batches in user order, not sorted by length),
  and, for comparison, the same users in batches sorted by length;
- a per-component time table, forward and backward separately, taken in a
  second pass over the same batches with timing wrappers installed around the
  library's module-level functions (see ``profiled``). Nested calls are
  subtracted, so every row is EXCLUSIVE time and the rows add up to the step;
- the analytic FLOPs of a step (matmuls only, the usual "model FLOPs": the
  backward of a matmul is two matmuls of the same size, so a step costs 3x its
  forward), the achieved GFLOP/s, the same process's float32 matmul peak (a
  large square ``A @ B``) and their ratio, the efficiency;
- the peak resident memory of the process (``ru_maxrss``, the whole run), and the
  CPU time, system time and page faults of the timed steps (``getrusage``).

Axis letters as in ``layers.py``: B batch, T positions after trimming the
batch to its longest sequence, M masked positions in the batch, D width,
F feed-forward width, H heads, L layers, V vocabulary.

The library is never edited: timing hooks are installed by replacing names
inside the modules that call them (``minibert4rec.encoder.mha_forward``, ...)
and put back on exit, even after an exception.
"""
from __future__ import annotations

import contextlib
import functools
import importlib
import math
import os
import platform
import resource
import sys
import time
from collections import defaultdict

import numpy as np

from . import fast
from . import model as model_module
from .cloze import ClozeSampler, make_windows
from .fast import threads as fast_threads
from .fast.head import fused_output_loss
from .fast.threads import blas_thread_limit, blas_threads  # noqa: F401  (re-exported)
from .fast.threads import memory_kept
from .model import BERT4Rec, Config

# ----------------------------------------------------------------------------
# Configurations and their synthetic data
# ----------------------------------------------------------------------------

#: The benchmark shapes. ``lengths`` names the law of the synthetic users'
#: training-sequence lengths (see ``user_lengths``). Dropouts are the authors'
#: (they cost time: a random mask per dropout site, whatever its rate).
CONFIGS = {
    "beauty": dict(vocab_size=54544, max_len=50, hidden=64, layers=2, heads=2, batch_size=256,
                   mask_ratio=0.6, max_predictions=30, sliding_step=5, hidden_dropout=0.5,
                   attention_dropout=0.2, lengths="beauty", peak_size=2048, cloze_copies=10),
    "ml-1m": dict(vocab_size=3418, max_len=200, hidden=64, layers=2, heads=2, batch_size=256,
                  mask_ratio=0.2, max_predictions=40, sliding_step=100, hidden_dropout=0.2,
                  attention_dropout=0.2, lengths="ml-1m", peak_size=2048, cloze_copies=10),
    "tiny": dict(vocab_size=202, max_len=20, hidden=16, layers=2, heads=2, batch_size=32,
                 mask_ratio=0.4, max_predictions=10, sliding_step=5, hidden_dropout=0.1,
                 attention_dropout=0.1, lengths="uniform", peak_size=512),
}

_MODEL_KEYS = ("vocab_size", "max_len", "hidden", "layers", "heads", "ffn", "hidden_dropout",
               "attention_dropout", "position", "attention", "gelu")


def resolve_config(config, **overrides) -> dict:
    """A configuration name or dict (plus overrides) -> a full dict with a ``name``."""
    if isinstance(config, str):
        if config not in CONFIGS:
            raise ValueError(f"unknown benchmark configuration {config!r}: "
                             f"use one of {', '.join(CONFIGS)}")
        cfg = dict(CONFIGS[config], name=config)
    else:
        cfg = dict(config)
        cfg.setdefault("name", "custom")
    cfg.update({k: v for k, v in overrides.items() if v is not None})
    cfg.setdefault("sliding_step", max(1, cfg["max_len"] // 2))
    cfg.setdefault("lengths", "uniform")
    cfg.setdefault("peak_size", 2048)
    cfg.setdefault("cloze_copies", 1)
    return cfg


def user_lengths(law, n, max_len, rng) -> np.ndarray:
    """Lengths of ``n`` synthetic users' training sequences (the test item already removed).

    beauty   4 + X with P(X = k) ~ (k + 5.9)^-3.25, k = 0..399: a maximum-likelihood
             fit to Amazon Beauty's 40,226 users (mean 7.8, median 5, 99th percentile
             41, a tail to ~300). Cut into windows of N = 50 with step 5 this gives
             Beauty's instance mix: mean window length ~9.3, ~30 % of length 4 and
             ~5 % full windows (the real data: 9.2, 31 %, 4.2 %).
    ml-1m    log-normal, median 96, sigma 1.04 (ML-1m: >= 20 ratings a user, mean 166),
             clipped to 19..2313; with N = 200 and step 100 most instances are full length.
    full     every user has exactly N items (scaling runs over N).
    uniform  uniform in 3..N (the tiny configuration).
    """
    if law == "beauty":
        k = np.arange(400)
        p = (k + 5.9) ** -3.25
        return 4 + rng.choice(400, size=n, p=p / p.sum())
    if law == "ml-1m":
        return np.clip(np.rint(rng.lognormal(math.log(96.0), 1.04, size=n)), 20, 2314).astype(np.int64) - 1
    if law == "full":
        return np.full(n, max_len, dtype=np.int64)
    if law == "uniform":
        return rng.integers(3, max_len + 1, size=n)
    raise ValueError(f"unknown length law {law!r}: beauty, ml-1m, full or uniform")


def _users(cfg, n, rng) -> list:
    """n synthetic users: realistic lengths, item ids uniform in 1..V-2."""
    lengths = user_lengths(cfg["lengths"], n, cfg["max_len"], rng)
    n_items = cfg["vocab_size"] - 2
    return [rng.integers(1, n_items + 1, size=int(l)) for l in lengths]


def synthetic_batches(cfg, n_batches, rng) -> list:
    """``n_batches`` training batches built exactly as training builds them.

    Synthetic users are cut into windows (``cloze.make_windows``), and
    ``n_batches * B / (K + 1)`` windows go through ``cloze.ClozeSampler`` with
    K = ``cloze_copies`` cloze instances and one mask-last instance per window
    (the training presets' mix: 10 + 1 for Beauty and ML-1m) and ONE length bucket: the
    batches are consecutive slices of the length-sorted instances, a stratified
    sample of an epoch's batch shapes (short batches and long ones in the
    proportions of an epoch), yielded in shuffled order.
    """
    B, N = cfg["batch_size"], cfg["max_len"]
    copies = int(cfg.get("cloze_copies", 1))
    need = -(-n_batches * B // (copies + 1))             # windows (copies + 1 instances each)
    windows, lengths = np.zeros((0, N), np.int64), np.zeros(0, np.int64)
    while len(lengths) < need:
        w, l = make_windows(_users(cfg, max(need, 64), rng), N, cfg["sliding_step"])
        windows, lengths = np.concatenate([windows, w]), np.concatenate([lengths, l])
    pick = rng.permutation(len(lengths))[:need]
    rows = [windows[i, :lengths[i]] for i in pick]
    sampler = ClozeSampler(rows, N, cfg["mask_ratio"], cfg["max_predictions"],
                           cfg["sliding_step"], mask_id=cfg["vocab_size"] - 1, copies=copies)
    batches = list(sampler.epoch(B, rng, bucket=n_batches))
    full = [b for b in batches if len(b.lengths) == B]
    return (full + [b for b in batches if len(b.lengths) != B])[:n_batches]


def synthetic_histories(cfg, n_batches, rng, batch_size=None) -> list:
    """``n_batches`` lists of user histories for inference (evaluation's input, unsorted)."""
    B = batch_size or cfg["batch_size"]
    return [_users(cfg, B, rng) for _ in range(n_batches)]


def build_model(cfg, seed=0, kernels="fast"):
    """BERT4Rec (float32) with the given kernels and the training optimizer for a configuration."""
    mcfg = Config(**{k: cfg[k] for k in _MODEL_KEYS if k in cfg})
    # the process-wide settings of the fast path are run_benchmark's business (keep_memory)
    model = BERT4Rec(mcfg, seed=seed, dtype=np.float32, output_loss=fast.output_loss_for(kernels))
    opt = fast.optimizer_for(kernels)(model.params, lr=1e-3, warmup=100, total_steps=10_000)
    return model, opt


# ----------------------------------------------------------------------------
# Analytic FLOPs (matrix multiplications only)
# ----------------------------------------------------------------------------

PROJ = "attention: QKV + output projections"
SCORES = "attention: QK^T and weights @ V"
SOFTMAX = "attention: softmax (+ mask)"
ATT_DROP = "attention: dropout on weights"
FFN_MM = "feed-forward: matmuls W1, W2"
FFN_GELU = "feed-forward: GELU"
EMB = "embeddings: lookup, position, mask"
LN = "LayerNorm + residual + dropout"
HEAD = "output head: gather + transform"
LOGITS = "output logits + loss"
OPT_CLIP = "optimizer: clip by global norm"
OPT_UPDATE = "optimizer: AdamWeightDecay update"
OTHER = "other (Python glue, untimed)"

#: Table rows in report order.
COMPONENTS = (EMB, PROJ, SCORES, SOFTMAX, ATT_DROP, FFN_MM, FFN_GELU, LN, HEAD, LOGITS,
              OPT_CLIP, OPT_UPDATE, OTHER)


def forward_flops(B, T, M, D, L, H, F, V) -> dict:
    """FLOPs of the forward matmuls of one training step, by component (2 per multiply-add).

    Per layer: QKV projection 2 BT D 3D, output projection 2 BT D D, scores
    Q K^T 2 B H T T Dh = 2 B T^2 D and weights @ V the same, FFN 2 x 2 BT D F.
    Head: Dense on the M gathered rows 2 M D D; tied logits 2 M D V.
    Elementwise work (softmax, GELU, LayerNorm, exp of the logits, Adam) is not
    counted, as usual for "model FLOPs". H does not change the count (H heads of Dh = D/H).
    """
    rows = B * T
    return {
        PROJ: L * (2 * rows * D * 3 * D + 2 * rows * D * D),
        SCORES: L * 2 * (2 * B * T * T * D),
        FFN_MM: L * 2 * (2 * rows * D * F),
        HEAD: 2 * M * D * D,
        LOGITS: 2 * M * D * V,
    }


def train_step_flops(B, T, M, D, L, H, F, V) -> dict:
    """FLOPs of one training step by component: 3 x forward (the backward of
    ``y = x W`` is ``dx = dy W^T`` and ``dW = x^T dy``, two matmuls of the same size).
    The fused loss does exactly that: logits, then ``z E`` and ``z^T n``."""
    return {k: 3 * v for k, v in forward_flops(B, T, M, D, L, H, F, V).items()}


def inference_flops(B, T, D, L, H, F, V) -> int:
    """Forward FLOPs of scoring B histories of T positions (one [MASK] each) over V items."""
    return int(sum(forward_flops(B, T, B, D, L, H, F, V).values()))


def _shape_args(model, B, T, M):
    c = model.cfg
    return dict(B=B, T=T, M=M, D=c.hidden, L=c.layers, H=c.heads, F=c.ffn, V=c.vocab_size)


# ----------------------------------------------------------------------------
# Timing wrappers: exclusive time per component, installed by monkeypatching
# ----------------------------------------------------------------------------

FWD, BWD, FUSED, STEP = "forward", "backward", "fused", "step"

#: (module, function name, component, phase, sticky). A STICKY wrapper keeps
#: everything it calls in its own component (the head's LayerNorm is "output
#: head", not "LayerNorm"); otherwise a wrapped callee takes its own time.
PATCHES = (
    ("minibert4rec.model", "embedding_forward", EMB, FWD, False),
    ("minibert4rec.model", "embedding_backward", EMB, BWD, False),
    ("minibert4rec.model", "learned_position_forward", EMB, FWD, False),
    ("minibert4rec.model", "learned_position_backward", EMB, BWD, False),
    ("minibert4rec.model", "sinusoidal_position_forward", EMB, FWD, False),
    ("minibert4rec.model", "sinusoidal_position_backward", EMB, BWD, False),
    ("minibert4rec.model", "additive_mask", EMB, FWD, False),
    ("minibert4rec.model", "layernorm_forward", LN, FWD, False),
    ("minibert4rec.model", "layernorm_backward", LN, BWD, False),
    ("minibert4rec.model", "dropout_forward", LN, FWD, False),
    ("minibert4rec.model", "dropout_backward", LN, BWD, False),
    ("minibert4rec.model", "block_forward", LN, FWD, False),       # own time: residual sums
    ("minibert4rec.model", "block_backward", LN, BWD, False),
    ("minibert4rec.model", "gather_rows", HEAD, FWD, False),
    ("minibert4rec.model", "gather_rows_backward", HEAD, BWD, False),
    ("minibert4rec.model", "head_transform_forward", HEAD, FWD, True),
    ("minibert4rec.model", "head_transform_backward", HEAD, BWD, True),
    ("minibert4rec.encoder", "mha_forward", PROJ, FWD, False),      # own: weight concat, head split/merge
    ("minibert4rec.encoder", "mha_backward", PROJ, BWD, False),
    ("minibert4rec.encoder", "residual_layernorm_forward", LN, FWD, False),
    ("minibert4rec.encoder", "residual_layernorm_backward", LN, BWD, False),
    ("minibert4rec.encoder", "ffn_forward", FFN_MM, FWD, False),
    ("minibert4rec.encoder", "ffn_backward", FFN_MM, BWD, False),
    ("minibert4rec.encoder", "linear_forward", FFN_MM, FWD, False),
    ("minibert4rec.encoder", "linear_backward", FFN_MM, BWD, False),
    ("minibert4rec.encoder", "gelu_forward", FFN_GELU, FWD, False),
    ("minibert4rec.encoder", "gelu_backward", FFN_GELU, BWD, False),
    ("minibert4rec.attention", "linear_forward", PROJ, FWD, False),
    ("minibert4rec.attention", "linear_backward", PROJ, BWD, False),
    ("minibert4rec.attention", "attention_forward", SCORES, FWD, False),
    ("minibert4rec.attention", "attention_backward", SCORES, BWD, False),
    ("minibert4rec.attention", "masked_softmax_forward", SOFTMAX, FWD, False),
    ("minibert4rec.attention", "masked_softmax_backward", SOFTMAX, BWD, False),
    ("minibert4rec.attention", "dropout_forward", ATT_DROP, FWD, False),
    ("minibert4rec.attention", "dropout_backward", ATT_DROP, BWD, False),
    ("minibert4rec.optim", "clip_by_global_norm", OPT_CLIP, STEP, False),
)


class Profiler:
    """Accumulates EXCLUSIVE wall time per (component, phase).

    Each wrapper pushes a frame on a stack; on return its elapsed time, minus
    the time of the wrapped calls made inside it, is added to its component,
    and the whole elapsed time is charged to the parent as child time.
    """

    def __init__(self):
        self.times = defaultdict(float)      # (component, phase) -> seconds
        self.calls = defaultdict(int)
        self._stack = []                     # frames: [component, phase, sticky, child seconds]

    def wrap(self, fn, component, phase, sticky=False):
        prof = self

        @functools.wraps(fn)
        def timed(*args, **kwargs):
            stack = prof._stack
            if stack and stack[-1][2]:                       # inside a sticky parent
                frame = [stack[-1][0], stack[-1][1], True, 0.0]
            else:
                frame = [component, phase, sticky, 0.0]
            stack.append(frame)
            t0 = time.perf_counter()
            try:
                return fn(*args, **kwargs)
            finally:
                dt = time.perf_counter() - t0
                stack.pop()
                key = (frame[0], frame[1])
                prof.times[key] += dt - frame[3]
                prof.calls[key] += 1
                if stack:
                    stack[-1][3] += dt

        timed.__bench_original__ = fn
        return timed

    def reset(self):
        self.times.clear()
        self.calls.clear()


@contextlib.contextmanager
def profiled(profiler=None, patches=PATCHES):
    """Install timing wrappers for the duration of a ``with`` block; always restore.

    Yields the Profiler. Names missing from a module (the library moved on) are
    skipped and listed in ``profiler.skipped``.
    """
    prof = profiler or Profiler()
    prof.skipped = []
    saved = []
    try:
        for mod_name, attr, component, phase, sticky in patches:
            mod = importlib.import_module(mod_name)
            fn = getattr(mod, attr, None)
            if fn is None or not callable(fn):
                prof.skipped.append(f"{mod_name}.{attr}")
                continue
            saved.append((mod, attr, fn))
            setattr(mod, attr, prof.wrap(fn, component, phase, sticky))
        yield prof
    finally:
        for mod, attr, fn in reversed(saved):
            setattr(mod, attr, fn)


# ----------------------------------------------------------------------------
# Machine facts: matmul peak, memory, BLAS
# ----------------------------------------------------------------------------


def matmul_peak_gflops(n=2048, repeats=5, dtype=np.float32, seed=0) -> float:
    """Median GFLOP/s of an (n, n) @ (n, n) float32 matmul (2 n^3 FLOPs) in this process."""
    rng = np.random.default_rng(seed)
    a = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    b = rng.standard_normal((n, n), dtype=np.float32).astype(dtype)
    out = np.empty((n, n), dtype)
    np.matmul(a, b, out=out)                                  # warm-up: threads, pages
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        np.matmul(a, b, out=out)
        times.append(time.perf_counter() - t0)
    return 2.0 * n ** 3 / float(np.median(times)) / 1e9


def head_matmul_gflops(M, D, V, repeats=5, seed=0) -> dict:
    """How fast BLAS alone runs the output head's three products at one step's shape.

    The fused head (fast.fused_output_loss) does 3 x 2 M D V of the step's
    FLOPs in three products that all have one side only D + 1 wide:

      z = [n | 1] @ [E | b]^T     (M, D+1) @ (D+1, V)     the logits
      z @ [E | 1]                 (M, V)   @ (V, D+1)     softmax-weighted E, row sums
      z^T @ [a n | a]             (V, M)   @ (M, D+1)     dE, db

    Timed here with nothing else: no exp, no loss, in the two ways the head
    could run them: whole-vocabulary calls on all BLAS threads ("blas"), and
    cache-sized tiles split over the cores with one BLAS thread each ("split",
    what fused_output_loss does). Returns {"blas": GFLOP/s, "split": GFLOP/s,
    "best": the larger}, FLOPs counted as 3 x 2 M D V like the step's.
    """
    from .fast.head import head_tiles
    from .fast.threads import run_split_blas
    rng = np.random.default_rng(seed)
    n1 = rng.standard_normal((M, D + 1), dtype=np.float32)                  # (M, D+1)
    Eb = rng.standard_normal((V, D + 1), dtype=np.float32)                  # (V, D+1)
    z = np.empty((M, V), np.float32)                                        # (M, V)
    out = np.empty((V, D + 1), np.float32)
    tiles, groups = head_tiles(M, V)                                        # as the head cuts them
    z_of = [np.empty((M, t.stop - t.start), np.float32) for t in tiles]

    def whole():
        np.matmul(n1, Eb.T, out=z)
        z @ Eb
        np.matmul(z.T, n1, out=out)

    def split():
        def part(idx):
            acc = np.zeros((M, D + 1), np.float32)
            for i in idx:
                np.matmul(n1, Eb[tiles[i]].T, out=z_of[i])
                acc += z_of[i] @ Eb[tiles[i]]
            for i in idx:
                np.matmul(z_of[i].T, n1, out=out[tiles[i]])
        run_split_blas(lambda parts: [part(groups[g]) for g in parts], range(len(groups)))

    flops = 3 * 2.0 * M * D * V
    result = {}
    for name, fn in (("blas", whole), ("split", split)):
        fn()                                                                # warm-up
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t0)
        result[name] = flops / float(np.median(times)) / 1e9
    result["best"] = max(result["blas"], result["split"])
    return result


def peak_rss_mb() -> float:
    """Peak resident memory of this process so far (ru_maxrss: KB on Linux, bytes on macOS)."""
    r = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return r / (1024.0 * 1024.0) if sys.platform == "darwin" else r / 1024.0


def blas_info() -> str:
    """A one-line description of NumPy's BLAS (name, version, threads if set)."""
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        text = f"{blas.get('name', '?')} {blas.get('version', '')}".strip()
        conf = blas.get("openblas configuration", "")
        if conf:
            text += f" ({' '.join(conf.split()[-2:])})"
    except Exception:                                         # older NumPy: no mode="dicts"
        text = "unknown BLAS"
    env = [f"{k}={os.environ[k]}" for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS",
                                             "MKL_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT")
           if k in os.environ]
    return text + (f", {', '.join(env)}" if env else "")


def _load():
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


# ----------------------------------------------------------------------------
# The benchmark
# ----------------------------------------------------------------------------


def _train_step(model, opt, batch, rng, step_fn=None):
    loss, grads = model.loss_and_grads(batch.ids, batch.sel, batch.targets, rng=rng, train=True)
    (step_fn or opt.step)(model.params, grads)
    return loss


def _progress(on, msg):
    if on:
        print(msg, file=sys.stderr, flush=True)


def _stats(xs) -> dict:
    xs = np.asarray(xs, dtype=np.float64)
    return {"median": float(np.median(xs)), "min": float(xs.min()), "max": float(xs.max()),
            "mean": float(xs.mean())}


def run_benchmark(config="beauty", steps=20, warmup=3, seed=0, progress=False, *,
                  profile=True, inference=True, peak=True, inference_steps=None,
                  overrides=None, threads=None, keep_memory=True, kernels="fast",
                  compare=True) -> dict:
    """Time training and inference steps on synthetic batches; return a JSON-ready dict.

    config:  "beauty", "ml-1m", "tiny" or a dict like ``CONFIGS[...]``
    steps:   timed training steps (each on its own batch; see ``synthetic_batches``)
    warmup:  untimed steps first, on the batches with the most masked positions
             (buffers reach their final size before timing starts)
    profile: also run the per-component pass (a second step on every batch, with
             timing wrappers installed)
    inference: time ``score_next`` on ``inference_steps`` (default: steps) batches
    peak:    measure the float32 matmul peak (True), skip it (False), or use a given number
    overrides: dict of configuration values to change (vocab_size, batch_size, max_len, lengths, ...)
    threads: limit OpenBLAS to this many threads for the whole run (peak included); None: as is
    keep_memory: with the fast kernels, let malloc keep freed memory (as ``train
             --kernels fast`` does, see ``fast.threads.keep_freed_memory``); False
             measures malloc's default behaviour (only meaningful in a fresh process:
             the setting cannot be undone)
    kernels: "fast" (``fast.enable()`` first) or "reference" (no process-wide setting)
    compare: also time the reference path and each trick of the fast path on the
             same batches, interleaved (see ``compare_tricks``)

    Keys of the result: see ``format_report``; at least train_sequences_per_s,
    train_tokens_per_s, inference_sequences_per_s, achieved_gflops, peak_gflops,
    efficiency, peak_rss_mb and components.
    """
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    cfg = resolve_config(config, **(overrides or {}))
    fast.check_kernels(kernels)
    if kernels == "fast":
        if keep_memory:
            fast.enable()
        else:
            fast_threads.prefer_short_blas_spin()
    with blas_thread_limit(threads):
        return _run(cfg, steps, warmup, seed, progress, profile, inference, peak, inference_steps,
                    kernels, compare)


def _run(cfg, steps, warmup, seed, progress, profile, inference, peak, inference_steps,
         kernels="fast", compare=False) -> dict:
    rng = np.random.default_rng(seed)
    load_start = _load()
    model, opt = build_model(cfg, seed, kernels)
    batches = synthetic_batches(cfg, steps, rng)
    drop_rng = np.random.default_rng(seed + 1)

    # -- warm-up on the largest batches (the logits buffer reaches its final size)
    by_size = sorted(range(len(batches)), key=lambda i: -len(batches[i].sel))
    for w in range(warmup):
        _train_step(model, opt, batches[by_size[w % len(batches)]], drop_rng)
        _progress(progress, f"warm-up {w + 1}/{warmup}")

    # -- timed steps, no wrappers
    step_s, shapes = [], []
    ru0 = resource.getrusage(resource.RUSAGE_SELF)
    for i, b in enumerate(batches):
        t0 = time.perf_counter()
        loss = _train_step(model, opt, b, drop_rng)
        step_s.append(time.perf_counter() - t0)
        shapes.append((len(b.lengths), b.ids.shape[1], len(b.sel), int(b.lengths.sum())))
        _progress(progress, f"step {i + 1}/{steps}: {1e3 * step_s[-1]:.1f} ms "
                            f"(B={shapes[-1][0]} T={shapes[-1][1]} M={shapes[-1][2]}, loss {loss:.3f})")
    ru1 = resource.getrusage(resource.RUSAGE_SELF)
    step_s = np.array(step_s)
    Bs, Ts, Ms, toks = (np.array(c, dtype=np.float64) for c in zip(*shapes))
    flops = np.array([sum(train_step_flops(**_shape_args(model, *s[:3])).values()) for s in shapes])

    result = {
        "config": cfg["name"],
        "kernels": kernels,
        "model": model.cfg.to_dict(),
        "batch_size": cfg["batch_size"], "mask_ratio": cfg["mask_ratio"],
        "max_predictions": cfg["max_predictions"], "length_law": cfg["lengths"],
        "cloze_copies": int(cfg["cloze_copies"]),
        "steps": int(steps), "warmup": int(warmup), "seed": int(seed),
        "B": float(Bs.mean()), "mean_T": float(Ts.mean()), "mean_M": float(Ms.mean()),
        "mean_tokens": float(toks.mean()),
        "padding_fraction": float(1.0 - toks.sum() / (Bs * Ts).sum()),
        "step_ms": {k: 1e3 * v for k, v in _stats(step_s).items()},
        "train_sequences_per_s": float(np.median(Bs / step_s)),
        "train_tokens_per_s": float(np.median(toks / step_s)),
        "train_sequences_per_s_overall": float(Bs.sum() / step_s.sum()),
        "flops_per_step": float(np.median(flops)),
        "achieved_gflops": float(np.median(flops / step_s) / 1e9),
        "achieved_gflops_overall": float(flops.sum() / step_s.sum() / 1e9),
        # process-wide CPU time of the timed steps (all threads): system time and page
        # faults show the cost of fresh memory (see fast.threads.keep_freed_memory)
        "cpu_user_s_per_step": (ru1.ru_utime - ru0.ru_utime) / steps,
        "cpu_system_s_per_step": (ru1.ru_stime - ru0.ru_stime) / steps,
        "cpu_utilisation": ((ru1.ru_utime - ru0.ru_utime) + (ru1.ru_stime - ru0.ru_stime)) / step_s.sum(),
        "page_faults_per_step": (ru1.ru_minflt - ru0.ru_minflt) / steps,
    }

    # -- per-component pass: the same batches, timing wrappers installed
    if profile:
        prof = Profiler()
        prof_s = []
        upd = prof.wrap(opt.step, OPT_UPDATE, STEP)
        plain_loss = model.output_loss
        model.output_loss = prof.wrap(plain_loss, LOGITS, FUSED)      # the whole output loss
        try:
            with profiled(prof):
                for i, b in enumerate(batches):
                    t0 = time.perf_counter()
                    _train_step(model, opt, b, drop_rng, step_fn=upd)
                    prof_s.append(time.perf_counter() - t0)
                    _progress(progress, f"profiled step {i + 1}/{steps}: {1e3 * prof_s[-1]:.1f} ms")
        finally:
            model.output_loss = plain_loss
        result["profiled_step_ms"] = {k: 1e3 * v for k, v in _stats(prof_s).items()}
        result["components"] = _component_table(prof, float(np.sum(prof_s)), len(batches),
                                                shapes, model)
        result["unprofiled_names"] = list(prof.skipped)

    # -- the reference path and each trick of the fast path, on the same batches
    # (the peak memory of the path benchmarked is taken first: the reference's
    # whole (M, V) arrays would otherwise set it)
    result["peak_rss_mb"] = float(peak_rss_mb())
    if compare:
        result["tricks"] = compare_tricks(model, batches, drop_rng, progress)
        ref = result["tricks"][0]
        result["reference_sequences_per_s"] = ref["sequences_per_s"]
        result["optimizer_tricks"] = compare_optimizers(model, batches[0], drop_rng, repeats=steps)
        result["peak_rss_mb_with_reference"] = float(peak_rss_mb())

    # -- inference: score_next over the whole vocabulary, evaluation's batches
    if inference:
        n_inf = inference_steps or steps
        hist = synthetic_histories(cfg, n_inf + 1, rng)
        model.score_next(hist[-1])                                         # warm-up
        inf_s, inf_T, inf_flops = [], [], []
        for i, h in enumerate(hist[:n_inf]):
            t0 = time.perf_counter()
            model.score_next(h)
            inf_s.append(time.perf_counter() - t0)
            T = min(max(len(x) for x in h) + 1, model.cfg.max_len)
            inf_T.append(T)
            inf_flops.append(inference_flops(**{k: v for k, v in _shape_args(model, len(h), T, 0).items()
                                                if k != "M"}))
        inf_s = np.array(inf_s)
        nB = np.array([len(h) for h in hist[:n_inf]], dtype=np.float64)
        # the same users scored in batches sorted by history length (less padding)
        users = sorted((u for h in hist[:n_inf] for u in h), key=len)
        B = len(hist[0])
        sorted_s = []
        for i in range(0, len(users), B):
            t0 = time.perf_counter()
            model.score_next(users[i:i + B])
            sorted_s.append(time.perf_counter() - t0)
        result.update({
            "inference_sequences_per_s": float(np.median(nB / inf_s)),
            "inference_batch_ms": {k: 1e3 * v for k, v in _stats(inf_s).items()},
            "inference_mean_T": float(np.mean(inf_T)),
            "inference_gflops": float(np.median(np.array(inf_flops) / inf_s) / 1e9),
            "inference_sequences_per_s_overall": float(nB.sum() / inf_s.sum()),
            "inference_sequences_per_s_sorted": float(len(users) / np.sum(sorted_s)),   # overall
        })

    # -- the machine
    if peak is True:
        peak_g = matmul_peak_gflops(cfg["peak_size"])
        result["peak_matmul_size"] = int(cfg["peak_size"])
    else:
        peak_g = float(peak) if peak else None                 # None: not measured (JSON null)
    result["peak_gflops"] = peak_g
    result["efficiency"] = result["achieved_gflops"] / peak_g if peak_g else None
    # -- the ceiling: the head's matmuls at BLAS's own speed for their shape, all
    # the other matmuls at the peak, elementwise work free (measured after the
    # peak memory above, so its (M, V) scratch block is not counted there)
    if peak_g and profile:
        B, T, M = (int(round(x.mean())) for x in (Bs, Ts, Ms))
        parts = train_step_flops(**_shape_args(model, B, T, M))
        head = head_matmul_gflops(M, model.cfg.hidden, model.cfg.vocab_size)
        total = sum(parts.values())
        ideal_s = (parts[LOGITS] / head["best"] + (total - parts[LOGITS]) / peak_g) / 1e9
        result["head_matmul_gflops"] = head
        result["efficiency_ceiling"] = total / ideal_s / 1e9 / peak_g
    result.update({
        "numpy": np.__version__, "blas": blas_info(), "blas_threads": blas_threads(),
        "cpu_count": os.cpu_count(), "malloc_keeps_freed_memory": memory_kept(),
        "python": platform.python_version(), "machine": platform.machine(),
        "load_average_start": load_start, "load_average_end": _load(),
    })
    return result


def compare_optimizers(model, batch, rng, repeats=10) -> list:
    """Time of one AdamWeightDecay update of every parameter: whole arrays (reference) and in
    blocks on two threads (fast), interleaved, on copies of the weights (the model's stay).

    Rows {"trick", "update_ms" (median), "speedup" (median of reference / this)}.
    """
    from .fast.optim import BlockedAdamWeightDecay
    from .optim import AdamWeightDecay
    _, grads = model.loss_and_grads(batch.ids, batch.sel, batch.targets, rng=rng, train=True)
    copies = {cls: {k: v.copy() for k, v in model.params.items()}
              for cls in (AdamWeightDecay, BlockedAdamWeightDecay)}
    opts = {cls: cls(p, clip_norm=0) for cls, p in copies.items()}
    times = {cls: [] for cls in opts}
    for _ in range(max(3, repeats)):
        for cls, opt in opts.items():
            t0 = time.perf_counter()
            opt.step(copies[cls], grads)
            times[cls].append(time.perf_counter() - t0)
    ref = np.array(times[AdamWeightDecay])
    labels = {AdamWeightDecay: "reference: optimizer update, whole arrays",
              BlockedAdamWeightDecay: "blocked optimizer update, two threads"}
    return [{"trick": labels[cls], "update_ms": float(1e3 * np.median(t)),
             "speedup": float(np.median(ref / np.array(t)))} for cls, t in times.items()]


#: The tricks of the fast path, in the order they are switched on (see compare_tricks).
TRICKS = (
    ("reference: plain output loss, (M, V) logits formed whole", "reference"),
    ("fused tiled head: one pass over the logits, exp in the cache", "fused, one group"),
    ("+ head tiles on two threads, one BLAS thread each", "fused, two groups"),
)


def compare_tricks(model, batches, rng, progress=False) -> list:
    """Forward + backward time of the reference path and of each fast-path trick.

    Every batch is run once per variant, one variant after the other on the
    same batch (interleaved, so a change in the machine's load touches all of
    them alike); no optimizer step, so the weights stay as they are. Each row:
    {"trick", "step_ms" (median over batches), "sequences_per_s" (median),
    "speedup" (median over batches of reference time / this time)}. The
    process-wide settings (malloc, BLAS threads and spin) are those in effect.
    """
    saved_loss, saved_split = model.output_loss, fast_threads.SPLIT_THREADS
    variants = {"reference": (model_module.output_loss, saved_split),
                "fused, one group": (fused_output_loss, 1),
                "fused, two groups": (fused_output_loss, max(2, saved_split))}
    times = {name: [] for _, name in TRICKS}
    try:
        for i, b in enumerate(batches):
            for _, name in TRICKS:
                model.output_loss, fast_threads.SPLIT_THREADS = variants[name]
                t0 = time.perf_counter()
                model.loss_and_grads(b.ids, b.sel, b.targets, rng=rng, train=True)
                times[name].append(time.perf_counter() - t0)
            _progress(progress, f"compared kernels on batch {i + 1}/{len(batches)}: " + ", ".join(
                f"{1e3 * times[n][-1]:.0f} ms" for _, n in TRICKS))
    finally:
        model.output_loss, fast_threads.SPLIT_THREADS = saved_loss, saved_split
    Bs = np.array([len(b.lengths) for b in batches], dtype=np.float64)
    ref = np.array(times["reference"])
    rows = []
    for label, name in TRICKS:
        t = np.array(times[name])
        rows.append({"trick": label, "step_ms": float(1e3 * np.median(t)),
                     "sequences_per_s": float(np.median(Bs / t)),
                     "speedup": float(np.median(ref / t))})
    return rows


def _component_table(prof, total_s, n_steps, shapes, model) -> list:
    """Rows {component, forward_ms, backward_ms, fused_ms, step_ms, total_ms, share, gflop, gflops}."""
    rows = []
    flops = defaultdict(float)
    for s in shapes:
        for k, v in train_step_flops(**_shape_args(model, *s[:3])).items():
            flops[k] += v / n_steps
    attributed = sum(prof.times.values())
    for comp in COMPONENTS:
        per = {ph: 1e3 * prof.times.get((comp, ph), 0.0) / n_steps for ph in (FWD, BWD, FUSED, STEP)}
        if comp == OTHER:
            per[STEP] = 1e3 * max(0.0, total_s - attributed) / n_steps
        total = sum(per.values())
        if total == 0.0 and comp not in (OTHER,) and comp not in flops:
            continue
        gflop = flops.get(comp, 0.0)
        rows.append({"component": comp, "forward_ms": per[FWD], "backward_ms": per[BWD],
                     "fused_ms": per[FUSED], "step_ms": per[STEP], "total_ms": total,
                     "share": total / (1e3 * total_s / n_steps) if total_s else 0.0,
                     "gflop": gflop / 1e9,
                     "gflops": (gflop / (total / 1e3) / 1e9) if gflop and total else None})
    return rows


# ----------------------------------------------------------------------------
# Scaling runs
# ----------------------------------------------------------------------------

_VARY = {"vocab": "vocab_size", "batch": "batch_size", "max_len": "max_len"}


def scaling(config="beauty", vary="vocab", values=None, steps=5, warmup=1, seed=0,
            progress=False, peak=True, threads=None) -> list:
    """Throughput as one size grows: a list of dicts, one per value.

    vary="vocab" (V), "batch" (B) or "max_len" (N). For max_len every synthetic
    user has exactly N items (length law "full"), so T = N in every batch;
    otherwise the configuration's length law is kept. The matmul peak is
    measured once and shared. No per-component pass (it would double the time).
    """
    if vary not in _VARY:
        raise ValueError(f"vary must be one of {', '.join(_VARY)}, got {vary!r}")
    base = resolve_config(config)
    with blas_thread_limit(threads):
        return _scaling(base, vary, values, steps, warmup, seed, progress, peak)


def _scaling(base, vary, values, steps, warmup, seed, progress, peak) -> list:
    if values is None:
        values = {"vocab": [1000, 4000, 16000, 54544, 100000],
                  "batch": [32, 64, 128, 256, 512],
                  "max_len": [25, 50, 100, 200]}[vary]
    peak_g = matmul_peak_gflops(base["peak_size"]) if peak is True else peak
    out = []
    for v in values:
        over = {_VARY[vary]: int(v)}
        if vary == "max_len":
            over["lengths"] = "full"
        r = run_benchmark(base, steps=steps, warmup=warmup, seed=seed, progress=False,
                          profile=False, inference=True, peak=peak_g, overrides=over,
                          compare=False)
        row = {"vary": vary, "value": int(v), "mean_T": r["mean_T"], "mean_M": r["mean_M"],
               "step_ms": r["step_ms"]["median"],
               "train_sequences_per_s": r["train_sequences_per_s"],
               "train_tokens_per_s": r["train_tokens_per_s"],
               "inference_sequences_per_s": r["inference_sequences_per_s"],
               "achieved_gflops": r["achieved_gflops"], "efficiency": r["efficiency"],
               "peak_gflops": r["peak_gflops"], "peak_rss_mb": r["peak_rss_mb"]}
        out.append(row)
        _progress(progress, f"{vary}={v}: {row['step_ms']:.1f} ms/step, "
                            f"{row['train_sequences_per_s']:.0f} seq/s")
    return out


def format_scaling(rows) -> str:
    """A text table of ``scaling``'s rows."""
    if not rows:
        return "(no rows)"
    head = (f"{rows[0]['vary']:>8s} {'mean T':>7s} {'mean M':>7s} {'ms/step':>9s} {'train seq/s':>12s} "
            f"{'tokens/s':>10s} {'infer seq/s':>12s} {'GFLOP/s':>8s} {'eff.':>6s}")
    lines = [head, "-" * len(head)]
    for r in rows:
        lines.append(f"{r['value']:>8d} {r['mean_T']:>7.1f} {r['mean_M']:>7.0f} {r['step_ms']:>9.1f} "
                     f"{r['train_sequences_per_s']:>12.0f} {r['train_tokens_per_s']:>10.0f} "
                     f"{r['inference_sequences_per_s']:>12.0f} {r['achieved_gflops']:>8.1f} "
                     + ("     -" if r["efficiency"] is None else f"{r['efficiency']:>6.2f}"))
    return "\n".join(lines)


# ----------------------------------------------------------------------------
# The text report
# ----------------------------------------------------------------------------


def _ms(x):
    return f"{x:9.2f}" if x else f"{'':9s}"


def format_report(r: dict) -> str:
    """The benchmark result as readable, aligned text tables."""
    m = r["model"]
    out = [f"minibert4rec bench: {r['config']}  (D={m['hidden']} L={m['layers']} H={m['heads']} "
           f"F={m['ffn']} N={m['max_len']} V={m['vocab_size']:,}, batch {r['batch_size']}, "
           f"mask ratio {r['mask_ratio']}, {r.get('cloze_copies', 1)} cloze + 1 mask-last "
           f"instances per window, float32)",
           f"{r['steps']} timed steps after {r['warmup']} warm-up; batches: mean T {r['mean_T']:.1f}, "
           f"mean M {r['mean_M']:.0f} masked, {r['mean_tokens']:.0f} real tokens "
           f"({100 * r['padding_fraction']:.0f} % padding)",
           ""]
    s = r["step_ms"]
    rows = [("training step (ms)", f"median {s['median']:.1f}   min {s['min']:.1f}   max {s['max']:.1f}"),
            ("training sequences/s", f"{r['train_sequences_per_s']:,.0f}   (all steps together: "
                                     f"{r['train_sequences_per_s_overall']:,.0f})"),
            ("training tokens/s", f"{r['train_tokens_per_s']:,.0f}")]
    if "inference_sequences_per_s" in r:
        rows.append(("inference sequences/s", f"{r['inference_sequences_per_s']:,.0f}   (score_next, "
                     f"batch {r['batch_size']}, mean T {r['inference_mean_T']:.1f}, "
                     f"{r['inference_batch_ms']['median']:.1f} ms a batch)"))
        if "inference_sequences_per_s_sorted" in r:
            rows.append(("  users sorted by length", f"{r['inference_sequences_per_s_sorted']:,.0f}   "
                         f"(the same users in batches of similar lengths, all batches together; "
                         f"unsorted: {r['inference_sequences_per_s_overall']:,.0f})"))
    rows += [("FLOPs per step", f"{r['flops_per_step'] / 1e9:.2f} GFLOP (matmuls, fwd + bwd)"),
             ("achieved", f"{r['achieved_gflops']:.1f} GFLOP/s"),
             ("float32 matmul peak", "not measured" if r["peak_gflops"] is None else
              f"{r['peak_gflops']:.1f} GFLOP/s"
              + (f" ({r['peak_matmul_size']}^2 matmul, this process)" if "peak_matmul_size" in r else "")),
             ("efficiency", "-" if r["efficiency"] is None else f"{r['efficiency']:.2f}  (achieved / peak)"),
             ("peak resident memory", f"{r['peak_rss_mb']:.0f} MB"
              + (f" ({r['peak_rss_mb_with_reference']:.0f} MB once the reference path ran, "
                 f"in the table of tricks below)" if "peak_rss_mb_with_reference" in r else "")),
             ("CPU time per step", f"user {1e3 * r['cpu_user_s_per_step']:.0f} ms, system "
                                   f"{1e3 * r['cpu_system_s_per_step']:.0f} ms ({r['cpu_utilisation']:.2f} "
                                   f"cores busy), {r['page_faults_per_step']:,.0f} page faults"
                                   + ("" if r.get("malloc_keeps_freed_memory") else
                                      " (malloc returns freed memory to the system)"))]
    if r.get("efficiency_ceiling"):
        h = r["head_matmul_gflops"]
        rows.insert(next(i for i, (k, _) in enumerate(rows) if k == "efficiency") + 1,
                    ("efficiency ceiling", f"{r['efficiency_ceiling']:.2f}  (the logits' 3 matmuls "
                     f"alone reach {h['best']:.0f} GFLOP/s at this shape [all BLAS threads "
                     f"{h['blas']:.0f}, split {h['split']:.0f}]; the rest at the peak, "
                     f"elementwise work free)"))
    width = max(len(k) for k, _ in rows)
    out += [f"{k:<{width}s}  {v}" for k, v in rows]
    if r.get("tricks"):
        out += ["", "what each trick buys (forward + backward of the same batches, interleaved, "
                    "median over batches; the optimizer rows: one update of every parameter):"]
        w = max(len(t["trick"]) for t in r["tricks"])
        out += [f"{'trick':<{w}s} {'ms/step':>9s} {'seq/s':>8s} {'speed-up':>9s}"]
        out += [f"{t['trick']:<{w}s} {t['step_ms']:9.1f} {t['sequences_per_s']:8.0f} "
                f"{t['speedup']:8.2f}x" for t in r["tricks"]]
        for t in r.get("optimizer_tricks", []):
            out.append(f"{t['trick']:<{w}s} {t['update_ms']:9.1f} {'':8s} {t['speedup']:8.2f}x")
    if r.get("components"):
        ps = r["profiled_step_ms"]["median"]
        out += ["", f"where the time goes (exclusive ms per step, mean over the profiled steps; "
                    f"profiled step median {ps:.1f} ms):"]
        name_w = max(len(c["component"]) for c in r["components"])
        head = (f"{'component':<{name_w}s} {'forward':>9s} {'backward':>9s} {'fwd+bwd':>9s} "
                f"{'total':>9s} {'share':>6s} {'GFLOP':>7s} {'GFLOP/s':>8s}")
        out += [head, "-" * len(head)]
        tot = 0.0
        for c in r["components"]:
            fused = c["fused_ms"] + c["step_ms"]
            tot += c["total_ms"]
            gf = f"{c['gflop']:7.2f}" if c["gflop"] else f"{'':7s}"
            gs = f"{c['gflops']:8.1f}" if c["gflops"] else f"{'':8s}"
            out.append(f"{c['component']:<{name_w}s} {_ms(c['forward_ms'])} {_ms(c['backward_ms'])} "
                       f"{_ms(fused)} {c['total_ms']:9.2f} {100 * c['share']:5.1f}% {gf} {gs}")
        out += ["-" * len(head), f"{'total':<{name_w}s} {'':9s} {'':9s} {'':9s} {tot:9.2f} {'100.0%':>6s}",
                "The output loss computes logits, softmax cross-entropy and their gradients in "
                "one call (fused, with",
                "the fast kernels), so its forward and backward are timed together."]
        if r.get("unprofiled_names"):
            out.append("not found in the library (not timed): " + ", ".join(r["unprofiled_names"]))
    load = r.get("load_average_start")
    if load and r.get("cpu_count") and load[0] > 0.5 * r["cpu_count"]:
        out += ["", f"warning: the machine was busy (load average {load[0]} on {r['cpu_count']} CPUs): "
                    f"these timings are pessimistic and noisy"]
    out += ["", f"numpy {r['numpy']}, {r['blas']}, {r.get('blas_threads') or '?'} BLAS threads, "
                f"{r['cpu_count']} CPUs, Python {r['python']}; "
                f"load average at start {r['load_average_start']}, at end {r['load_average_end']}"]
    return "\n".join(out)


# ----------------------------------------------------------------------------
# For the command line
# ----------------------------------------------------------------------------


def command(args) -> int:
    """Run the bench command from parsed arguments (cli.py's bench options); print; return 0."""
    import json
    r = run_benchmark(args.config, steps=args.steps, warmup=args.warmup, seed=args.seed,
                      progress=not args.json, threads=args.threads,
                      keep_memory=not args.malloc_default, kernels=args.kernels,
                      compare=not args.no_compare, overrides={"cloze_copies": args.cloze_copies})
    print(json.dumps(r, indent=1) if args.json else format_report(r))
    return 0


__all__ = ["CONFIGS", "COMPONENTS", "run_benchmark", "format_report", "scaling", "format_scaling",
           "train_step_flops", "forward_flops", "inference_flops", "matmul_peak_gflops",
           "peak_rss_mb", "profiled", "Profiler", "synthetic_batches", "user_lengths", "blas_info",
           "blas_threads", "blas_thread_limit", "resolve_config", "build_model", "command"]
