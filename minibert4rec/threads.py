"""How many threads BLAS (OpenBLAS, NumPy's default) may use, changed at run time.

On 2 cores shared with other work, two BLAS threads that wait for each other
can be several times SLOWER than one (bench measured Beauty steps of 760 ms
with 2 threads against 389 ms with 1 on a loaded machine); on an idle machine
2 threads win. ``train --threads N`` and ``bench --threads N`` use this.
"""
from __future__ import annotations

import contextlib

# How many threads element-wise work may use (model._exp_inplace reads it);
# blas_thread_limit sets it together with BLAS's own count.
ELEMENTWISE_THREADS = 2

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
