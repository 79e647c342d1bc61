"""Process-wide speed settings of the fast path: how many threads BLAS may use,
a split of work between Python threads (run_split, run_split_blas), how long
OpenBLAS's idle threads spin, and how malloc keeps freed memory
(keep_freed_memory).

None of this runs on ``import minibert4rec``: ``minibert4rec.fast.enable()``
applies the settings when the fast path is switched on (``train``, ``bench``
and ``demo`` with ``--kernels fast``, their default). This module imports no
NumPy, so that ``prefer_short_blas_spin`` can still act before NumPy loads
OpenBLAS.

BLAS (OpenBLAS, NumPy's default) threads are changed at run time. On 2 cores
shared with other work, two BLAS threads that wait for each other can be
several times SLOWER than one (bench measured Beauty steps of 760 ms with 2
threads against 389 ms with 1 on a loaded machine); on an idle machine 2
threads win. ``train --threads N`` and ``bench --threads N`` use this.
"""
from __future__ import annotations

import contextlib
import os
import sys
import threading
from concurrent.futures import ThreadPoolExecutor, wait

# How many Python threads run_split may use; blas_thread_limit sets it with BLAS's count.
SPLIT_THREADS = 2

SHORT_SPIN = "16"    # OPENBLAS_THREAD_TIMEOUT: 2**16 cycles (~25 us) instead of 2**28 (~0.1 s)


def _blas_spin_is_short() -> bool:
    value = os.environ.get("OPENBLAS_THREAD_TIMEOUT", "").strip()     # unset: OpenBLAS uses 28
    return value.isdigit() and int(value) <= 20


# Whether OpenBLAS's idle threads stop busy-waiting quickly: only then do the
# output head's two Python threads get both cores (run_split_blas). OpenBLAS
# reads the variable once, when NumPy loads it.
BLAS_SPIN_IS_SHORT = _blas_spin_is_short()


def prefer_short_blas_spin() -> bool:
    """Ask OpenBLAS's idle threads to stop spinning after ~25 us; returns BLAS_SPIN_IS_SHORT.

    After each call OpenBLAS's worker threads busy-wait for
    2**OPENBLAS_THREAD_TIMEOUT cycles (default 28: ~0.1 s), which takes a core
    away from the output head's two Python threads. OpenBLAS reads the
    variable once, when NumPy loads it: it is set here only if NumPy is not
    loaded yet and the user has not chosen a value (``python -m minibert4rec``
    calls this before importing NumPy when the fast kernels are in use).
    """
    global BLAS_SPIN_IS_SHORT
    if "numpy" not in sys.modules and "OPENBLAS_THREAD_TIMEOUT" not in os.environ:
        os.environ["OPENBLAS_THREAD_TIMEOUT"] = SHORT_SPIN
        BLAS_SPIN_IS_SHORT = True
    return BLAS_SPIN_IS_SHORT


_POOL, _POOL_SIZE = None, 0
_LOCAL = threading.local()          # .busy: this thread is inside run_split (no nesting)


def _reset_pool_after_fork():
    global _POOL, _POOL_SIZE
    _POOL, _POOL_SIZE = None, 0      # a forked child inherits the pool but not its threads


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_reset_pool_after_fork)


def run_split(work, items):
    """work(part) for the items split into SPLIT_THREADS contiguous parts, in parallel.

    The calling thread takes the first part, a worker pool the others. Returns
    when every part is done (also when one raises: the first exception is then
    re-raised). A call from inside a part runs inline (no deadlock on the pool).
    Parts must write to disjoint memory; then the result cannot depend on the
    number of threads.
    """
    global _POOL, _POOL_SIZE
    items = list(items)
    n = min(SPLIT_THREADS, len(items))
    if n < 2 or getattr(_LOCAL, "busy", False):
        work(items)
        return
    if _POOL is None or _POOL_SIZE < n - 1:
        _POOL, _POOL_SIZE = ThreadPoolExecutor(n - 1), n - 1

    def guarded(part):
        _LOCAL.busy = True
        try:
            work(part)
        finally:
            _LOCAL.busy = False

    k = -(-len(items) // n)
    parts = [items[i:i + k] for i in range(0, len(items), k)]
    futures = [_POOL.submit(guarded, part) for part in parts[1:]]
    try:
        guarded(parts[0])
    finally:
        wait(futures)                # never return while a worker still writes
    for fut in futures:
        fut.result()                 # re-raise a worker's exception


_BLAS_GET = ("scipy_openblas_get_num_threads64_", "scipy_openblas_get_num_threads",
             "openblas_get_num_threads64_", "openblas_get_num_threads")
_BLAS_SET = tuple(n.replace("get_", "set_") for n in _BLAS_GET)


_LIB = []                            # [(get, set) or None] once looked up


def _openblas():
    """The OpenBLAS library NumPy loaded (found in /proc/self/maps), via ctypes, or None.

    Looked up once per process (the training step asks for it every step).
    """
    if not _LIB:
        _LIB.append(_find_openblas())
    return _LIB[0]


def _find_openblas():
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
    global SPLIT_THREADS
    before = int(lib[0]()) if lib else None
    before_split = SPLIT_THREADS
    try:
        if lib:
            lib[1](int(n))
            SPLIT_THREADS = int(n)
        yield
    finally:
        if lib:
            lib[1](before)
        SPLIT_THREADS = before_split


def run_split_blas(work, items):
    """run_split for parts that call BLAS: each part's matmuls run on its own thread.

    A skinny matrix product ((809 x 65) @ (65 x 320) in the Beauty output
    head) keeps two BLAS threads only ~35 % busy, and the element-wise work
    between such products (exp) runs on one core. Here BLAS is set to ONE
    thread while the parts run side by side on SPLIT_THREADS Python
    threads (NumPy releases the GIL inside matmul and exp), then restored. Where
    the BLAS thread count cannot be set (not OpenBLAS), or inside another
    split, the parts run one after the other with BLAS as it is. So they do
    when OpenBLAS's idle threads busy-wait long (BLAS_SPIN_IS_SHORT false: see
    prefer_short_blas_spin): a spinning BLAS thread then holds
    one of the two cores, and the split Beauty step took 190 ms against 154 ms
    serial (125 ms with the short spin). As with run_split, the result must
    not depend on how the parts are shared out.
    """
    items = list(items)
    split = BLAS_SPIN_IS_SHORT and SPLIT_THREADS > 1 and len(items) > 1
    lib = _openblas() if split else None
    if lib is None or getattr(_LOCAL, "busy", False):
        work(items)
        return
    before = int(lib[0]())
    lib[1](1)
    try:
        run_split(work, items)
    finally:
        lib[1](before)


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
    (M_TRIM_THRESHOLD = 1 GB: it gives back only free space above that) and to
    grow it 64 MB at a time (M_TOP_PAD): freed blocks are reused as they are,
    already mapped. Measured here: a fresh ``x * x`` of 20 MB took 7.8 ms,
    2.5 ms once memory is kept; ``bench --malloc-default`` shows the effect on
    a whole training step.

    The cost: the process keeps its peak heap (``bench`` reports the peak
    resident memory). Process-wide and not undone (``fast.enable()`` calls
    it). A no-op that returns False where malloc is not glibc's (macOS,
    Windows, musl); if glibc refuses a setting, the ones already applied stay.
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
