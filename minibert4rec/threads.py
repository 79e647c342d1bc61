"""Process-wide speed settings: how many threads BLAS may use, and how malloc
keeps freed memory.

Threads: how many threads BLAS (OpenBLAS, NumPy's default) may use, changed at run time.

On 2 cores shared with other work, two BLAS threads that wait for each other
can be several times SLOWER than one (bench measured Beauty steps of 760 ms
with 2 threads against 389 ms with 1 on a loaded machine); on an idle machine
2 threads win. ``train --threads N`` and ``bench --threads N`` use this.
"""
from __future__ import annotations

import contextlib
import sys

# How many threads element-wise work may use (model._exp_inplace reads it);
# blas_thread_limit sets it together with BLAS's own count.
ELEMENTWISE_THREADS = 2

_POOL = None


def run_split(work, items):
    """work(part) for the items split into ELEMENTWISE_THREADS contiguous parts, in parallel.

    The calling thread takes the first part; a worker pool (created once) the
    others. Returns when all parts are done; an exception in any part is raised.
    """
    global _POOL
    items = list(items)
    n = min(ELEMENTWISE_THREADS, len(items))
    if n < 2:
        work(items)
        return
    if _POOL is None:
        from concurrent.futures import ThreadPoolExecutor
        _POOL = ThreadPoolExecutor(max(2, ELEMENTWISE_THREADS) - 1)
    k = -(-len(items) // n)
    parts = [items[i:i + k] for i in range(0, len(items), k)]
    futures = [_POOL.submit(work, part) for part in parts[1:]]
    work(parts[0])
    for fut in futures:
        fut.result()


_BLAS_GET = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
             "openblas_get_num_threads64_", "openblas_get_num_threads")
_BLAS_SET = tuple(n.replace("get_", "set_") for n in _BLAS_GET)


def _openblas():
    """The OpenBLAS library NumPy loaded (found in /proc/self/maps), via ctypes, or None."""
    try:
        import ctypes
        import re
        with open("/proc/self/maps") as f:
            paths = sorted(set(re.findall(r"(/\S*openblas\S*\.so\S*)", f.read())))
        for path in paths:
            lib = ctypes.CDLL(path)
            get = next((getattr(lib, n) for n in _BLAS_GET if hasattr(lib, n)), None)
            put = next((getattr(lib, n) for n in _BLAS_SET if hasattr(lib, n)), None)
            if get is not None and put is not None:
                return get, put
    except (OSError, ImportError):
        pass
    return None


def blas_threads():
    """OpenBLAS's current thread count, or None when it cannot be queried (not Linux/OpenBLAS)."""
    lib = _openblas()
    return int(lib[0]()) if lib else None


@contextlib.contextmanager
def blas_thread_limit(n):
    """Run a block with OpenBLAS limited to n threads (None: unchanged); restored on exit."""
    lib = _openblas() if n else None
    if n and lib is None:
        raise RuntimeError("cannot set the BLAS thread count here (OpenBLAS not found); "
                           "set OPENBLAS_NUM_THREADS before starting Python instead")
    global ELEMENTWISE_THREADS
    before = int(lib[0]()) if lib else None
    before_ew = ELEMENTWISE_THREADS
    try:
        if lib:
            lib[1](int(n))
            ELEMENTWISE_THREADS = int(n)
        yield
    finally:
        if lib:
            lib[1](before)
        ELEMENTWISE_THREADS = before_ew


# ----------------------------------------------------------------------------
# Memory: keep freed blocks for the next step instead of handing them back
# ----------------------------------------------------------------------------

_M_TRIM_THRESHOLD, _M_TOP_PAD, _M_MMAP_MAX = -1, -2, -4      # glibc's mallopt() parameters
_MEMORY_KEPT = False


def keep_freed_memory() -> bool:
    """Make glibc's malloc reuse freed memory instead of returning it to the system.

    A training step allocates the same large temporaries again and again (a
    (B, H, T, T) attention block is 80 MB for ML-1m). By default glibc serves
    every block above a threshold with a fresh mmap() and returns it with
    munmap() when NumPy frees it, so the next step's block starts as unmapped
    pages and the kernel must fault in and zero every 4 KB page on first touch
    (bench saw 45,000 page faults a step on ML-1m). Here we ask malloc to serve
    all blocks from its heap (M_MMAP_MAX = 0) and never to shrink it
    (M_TRIM_THRESHOLD = 1 GB): freed blocks are reused as they are, already
    mapped. Measured with ``bench`` (README, Performance): a fresh
    ``x * y`` of 20 MB took 7.8 ms against 2.5 ms once memory is kept.

    The cost: the process keeps its peak heap for its lifetime (``bench``
    reports the peak resident memory). Process-wide and not undone; a no-op
    that returns False where malloc is not glibc's (macOS, Windows, musl).
    """
    global _MEMORY_KEPT
    if _MEMORY_KEPT:
        return True
    if not sys.platform.startswith("linux"):
        return False
    try:
        import ctypes
        libc = ctypes.CDLL("libc.so.6")
        ok = (libc.mallopt(_M_MMAP_MAX, 0) == 1
              and libc.mallopt(_M_TRIM_THRESHOLD, 1 << 30) == 1
              and libc.mallopt(_M_TOP_PAD, 64 << 20) == 1)
    except (OSError, AttributeError):
        return False
    _MEMORY_KEPT = bool(ok)
    return _MEMORY_KEPT


def memory_kept() -> bool:
    """Whether keep_freed_memory() is in effect in this process."""
    return _MEMORY_KEPT
