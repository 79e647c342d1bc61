"""Optional: what a compiled, fused output-head kernel could buy (the head's share of the matmul peak).

    python benchmarks/head_kernel_probe.py                 # OpenBLAS phases of the head, one thread
    pip install numba mkl && python benchmarks/head_kernel_probe.py   # + a compiled loop kernel, + MKL

On Beauty the output head (minibert4rec.fast.fused_output_loss) is ~75 % of a training step and
~95 % of its FLOPs. This script times its phases for one chunk of m masked rows on
ONE BLAS thread (each of the head's two threads does exactly this for half of the
vocabulary), in the head's own cache-sized tiles:

  logits   z = [n | 1] @ [E | b]^T      (m, 65) @ (65, width)     per tile
  exp      z = exp(z)                   in place, in the cache
  z E      [z E | sums] += z @ [E | 1]  (m, width) @ (width, 65)
  dE       [dE | db] = z^T @ [a n | a]  (width, m) @ (m, 65), z read back from memory

and compares them with the same thread's square-matmul peak. A kernel that fused
the exp into the matmul (the usual answer on a GPU) could save at most the exp
row; it would also have to run the skinny matmuls at OpenBLAS's speed. With numba
installed, the script times a register-blocked loop kernel (numba compiles it
with LLVM for this CPU) on the logits tile to show how far a compiled loop nest
without a hand-tuned BLAS micro-kernel is from that. With Intel MKL installed
(``pip install mkl``), it times the same phases with MKL's sgemm, the other BLAS
NumPy could be built on. minibert4rec never imports numba or MKL.
"""
from __future__ import annotations

import argparse
import os
import statistics
import sys
import time

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from minibert4rec import bench  # noqa: E402,F401  (sets OPENBLAS_THREAD_TIMEOUT before BLAS starts)
from minibert4rec.fast.head import head_tiles  # noqa: E402
from minibert4rec.fast.threads import blas_thread_limit  # noqa: E402


def median_seconds(fn, repeats):
    fn()                                                      # warm-up (and numba's compile)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def numba_logits_kernel():
    """A register-blocked loop kernel for z = A @ Bt (A: (m, K), Bt: (K, w)), or None without numba."""
    try:
        from numba import njit
    except ImportError:
        return None

    @njit(fastmath=True, boundscheck=False, cache=False)
    def logits(A, Bt, C):                                     # 4 rows x 32 columns of C at a time
        m, K = A.shape
        w = Bt.shape[1]
        for i0 in range(0, m - 3, 4):
            for j0 in range(0, w - 31, 32):
                acc = np.zeros((4, 32), np.float32)
                for k in range(K):
                    a0, a1, a2, a3 = A[i0, k], A[i0 + 1, k], A[i0 + 2, k], A[i0 + 3, k]
                    for j in range(32):
                        b = Bt[k, j0 + j]
                        acc[0, j] += a0 * b
                        acc[1, j] += a1 * b
                        acc[2, j] += a2 * b
                        acc[3, j] += a3 * b
                for r in range(4):
                    for j in range(32):
                        C[i0 + r, j0 + j] = acc[r, j]
    return logits


def mkl_sgemm():
    """Intel MKL's cblas_sgemm on ONE thread as matmul(a, b, out, ta, tb), or None without MKL.

    For C-contiguous float32 arrays: out = op(a) @ op(b), op the transpose where ta / tb.
    MKL comes from ``pip install mkl`` (libmkl_rt); NumPy's own BLAS stays OpenBLAS.
    """
    import ctypes
    import ctypes.util
    import glob
    names = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))
    names += [ctypes.util.find_library("mkl_rt")] if ctypes.util.find_library("mkl_rt") else []
    lib = None
    for name in names:
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError:
            continue
    if lib is None:
        return None
    lib.MKL_Set_Num_Threads(1)
    c_int, c_float, c_ptr = ctypes.c_int, ctypes.c_float, ctypes.c_void_p
    lib.cblas_sgemm.argtypes = [c_int] * 6 + [c_float, c_ptr, c_int, c_ptr, c_int, c_float, c_ptr, c_int]
    row_major, no_trans, trans = 101, 111, 112

    def matmul(x, y, out, tx, ty):
        for arr in (x, y, out):
            assert arr.dtype == np.float32 and arr.flags.c_contiguous
        k = x.shape[0] if tx else x.shape[1]
        lib.cblas_sgemm(row_major, trans if tx else no_trans, trans if ty else no_trans,
                        out.shape[0], out.shape[1], k, 1.0, x.ctypes.data, x.shape[1],
                        y.ctypes.data, y.shape[1], 0.0, out.ctypes.data, out.shape[1])
    return matmul


def gflops(flop, seconds):
    """flop / seconds in GFLOP/s; NaN when a phase measured no time at all (a tiny shape on
    a coarse or busy clock: a phase is the difference of two medians, clipped at 0)."""
    return flop / seconds / 1e9 if seconds > 0 else float("nan")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--rows", type=int, default=1024, help="masked rows in the chunk (the head's chunk: 1024)")
    p.add_argument("--vocab", type=int, default=54_544, help="vocabulary incl. padding and [MASK] (Beauty: 54,544)")
    p.add_argument("--hidden", type=int, default=64, help="D")
    p.add_argument("--repeats", type=int, default=7)
    a = p.parse_args(argv)
    m, V, D = a.rows, a.vocab, a.hidden
    rng = np.random.default_rng(0)
    n1 = (0.1 * rng.standard_normal((m, D + 1))).astype(np.float32)          # (m, D+1) [n | 1]
    Eb = (0.1 * rng.standard_normal((V, D + 1))).astype(np.float32)          # (V, D+1) [E | b]
    tiles, _ = head_tiles(m, V)
    buf = np.empty(m * V, np.float32)                                         # the logits, tile after tile
    z_of = [buf[m * t.start:m * t.stop].reshape(m, t.stop - t.start) for t in tiles]
    dEb = np.empty((V, D + 1), np.float32)
    zE = np.zeros((m, D + 1), np.float32)

    tmp = np.empty((m, D + 1), np.float32)

    def phases(matmul):
        """Seconds of the head's phases with ``matmul(a, b, out, ta, tb)``: out = a(^T) @ b(^T)."""
        def first_pass(upto):                                 # the head's first pass, cut after
            for t, z in zip(tiles, z_of):                     # phase ``upto`` (1, 2 or 3)
                matmul(n1, Eb[t], z, False, True)
                if upto > 1:
                    np.exp(z, out=z)
                if upto > 2:
                    matmul(z, Eb[t], tmp, False, False)
                    zE[...] += tmp

        def d_E():                                            # the second pass, after the row sums
            for t, z in zip(tiles, z_of):
                matmul(z, n1, dEb[t], True, False)
        # each phase as the difference of cumulative times, so the values and the
        # cache are what the head sees (z E reads the tile exp just wrote)
        t1, t2, t3 = (median_seconds(lambda: first_pass(k), a.repeats) for k in (1, 2, 3))
        return {"logits": t1, "exp": max(t2 - t1, 0.0), "zE": max(t3 - t2, 0.0),
                "dE": median_seconds(d_E, a.repeats), "first_pass": first_pass}

    def numpy_matmul(x, y, out, tx, ty):
        np.matmul(x.T if tx else x, y.T if ty else y, out=out)

    flop = 2.0 * m * V * (D + 1)                              # each of the three products
    mkl = mkl_sgemm()
    with blas_thread_limit(1):
        ph = phases(numpy_matmul)
        t_logits, t_exp, t_ze, t_de = ph["logits"], ph["exp"], ph["zE"], ph["dE"]
        small = np.empty((m, tiles[0].stop - tiles[0].start), np.float32)     # one cache-sized tile

        def recompute():                                      # the alternative to storing the logits:
            ph["first_pass"](3)                               # compute them again, tile by tile, in
            for t in tiles:                                   # the cache for the dE pass
                z = small[:, :t.stop - t.start]
                np.matmul(n1, Eb[t].T, out=z)
                np.exp(z, out=z)
                np.matmul(z.T, n1, out=dEb[t])
        t_recompute = median_seconds(recompute, a.repeats)
        X = rng.standard_normal((2048, 2048), dtype=np.float32)
        peak = 2 * 2048 ** 3 / median_seconds(lambda: X @ X, 5) / 1e9
        width = tiles[0].stop - tiles[0].start
        A, Bt = n1, np.ascontiguousarray(Eb[:width].T)                        # one logits tile
        C = np.empty((m, width), np.float32)
        t_tile_blas = median_seconds(lambda: np.matmul(A, Bt, out=C), 5 * a.repeats)
        kernel = numba_logits_kernel()
        t_tile_numba = None
        if kernel is not None:
            kernel(A, Bt, C)
            assert np.allclose(C, A @ Bt, atol=1e-4), "the loop kernel computes something else"
            t_tile_numba = median_seconds(lambda: kernel(A, Bt, C), 5 * a.repeats)
        ph_mkl = None
        if mkl is not None:
            mkl(n1, Eb[:width], C, False, True)
            assert np.allclose(C, A @ Bt, atol=1e-4), "MKL's sgemm computes something else"
            ph_mkl = phases(mkl)

    total = t_logits + t_exp + t_ze + t_de
    print(f"output head, one chunk of m={m} rows x V={V:,} items, D+1={D + 1}, tiles of {width} "
          f"columns, ONE BLAS thread (float32 matmul peak here {peak:.0f} GFLOP/s)")
    print(f"{'phase':<44s} {'ms':>7s} {'share':>6s} {'GFLOP/s':>8s} {'of peak':>8s}")
    for name, t, f in (("logits  [n|1] @ [E|b]^T   (m,65)@(65,w)", t_logits, flop),
                       ("exp, in place", t_exp, 0),
                       ("z E     z @ [E|1]         (m,w)@(w,65)", t_ze, flop),
                       ("dE      z^T @ [an|a]      (w,m)@(m,65)", t_de, flop)):
        g = f"{gflops(f, t):8.0f} {gflops(f, t) / peak:8.0%}" if f else ""
        print(f"{name:<44s} {t * 1e3:7.1f} {t / total:6.1%} {g}")
    print(f"{'head (these four)':<44s} {total * 1e3:7.1f} {1:6.0%} {gflops(3 * flop, total):8.0f} "
          f"{gflops(3 * flop, total) / peak:8.0%}")
    print()
    if ph_mkl is None:
        print("(Intel MKL not found: pip install mkl to time the same phases with its sgemm)")
    else:
        tm = ph_mkl["logits"] + ph_mkl["exp"] + ph_mkl["zE"] + ph_mkl["dE"]
        print("the same phases with Intel MKL's sgemm (one thread): " + ", ".join(
            f"{k} {ph_mkl[k] * 1e3:.1f} ms" + (f" ({gflops(flop, ph_mkl[k]):.0f} GFLOP/s)" if k != "exp" else "")
            for k in ("logits", "exp", "zE", "dE")))
        print(f"  head {tm * 1e3:.1f} ms, {gflops(3 * flop, tm):.0f} GFLOP/s, "
              f"{gflops(3 * flop, tm) / peak:.0%} of NumPy's peak")
    print(f"the logits computed twice instead of stored: {t_recompute * 1e3:.1f} ms "
          f"({gflops(3 * flop, t_recompute):.0f} GFLOP/s)")
    print(f"exp fused into the matmul for free: at most {gflops(3 * flop, total - t_exp):.0f} GFLOP/s "
          f"({gflops(3 * flop, total - t_exp) / peak:.0%} of peak) for the head")
    tile_flop = 2.0 * m * width * (D + 1)
    print(f"one logits tile ({m} x {D + 1}) @ ({D + 1} x {width}): OpenBLAS "
          f"{gflops(tile_flop, t_tile_blas):.0f} GFLOP/s", end="")
    if t_tile_numba is None:
        print("; numba not installed (pip install numba) for the compiled loop kernel")
    else:
        print(f", numba loop kernel (4 x 32 register block, fastmath) "
              f"{gflops(tile_flop, t_tile_numba):.0f} GFLOP/s")


if __name__ == "__main__":
    main()
