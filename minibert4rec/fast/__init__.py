"""The fast path: everything that makes training faster and is not needed to understand it.

The reference path (``layers``, ``attention``, ``encoder``, ``model``) is the
maths, in plain whole-array NumPy, and never imports this package. The fast
path builds on it and swaps in, where it pays:

    head.fused_output_loss   the output head's loss and gradients tile by tile, in
                             one pass over the logits (~85 % of a Beauty step);
                             same arguments as model.output_loss, same numbers
                             up to rounding
    optim.BlockedAdamWeightDecay
                             the optimizer's update in cache-sized blocks on two
                             threads; bit for bit the reference's
    threads                  BLAS thread count, the head's two-thread split,
                             OpenBLAS's spin time, malloc keeping freed memory

Nothing here happens on import. It is switched on explicitly:

    model = fast.build_model(cfg, kernels="fast")      # or "reference"
    python -m minibert4rec train --kernels fast         # the default of train, bench, demo

``enable()`` applies the process-wide settings; ``build_model`` calls it for
"fast". OpenBLAS's short spin takes effect only if set before NumPy is first
imported: the command line does that; in your own script call ``enable()``
before importing NumPy or anything that imports it. Tests check every fast
function against its reference.

This ``__init__`` imports no NumPy (the fused head is loaded on first use), so
that ``python -m minibert4rec`` can set OpenBLAS's spin time before NumPy
loads OpenBLAS.
"""
from __future__ import annotations

KERNELS = ("fast", "reference")


def enable() -> dict:
    """Apply the fast path's process-wide settings; return what is in effect.

    - OpenBLAS's idle threads stop spinning after ~25 us (only possible before
      NumPy is loaded, and only if the user has not set OPENBLAS_THREAD_TIMEOUT);
    - glibc's malloc keeps freed memory for the next step (no page faults on
      every step's fresh temporaries; a no-op elsewhere).
    Both stay for the life of the process.
    """
    from . import threads
    return {"short_blas_spin": threads.prefer_short_blas_spin(),
            "malloc_keeps_freed_memory": threads.keep_freed_memory()}


def output_loss_for(kernels: str):
    """The training loss function of a kernel set: model.output_loss or head.fused_output_loss."""
    check_kernels(kernels)
    if kernels == "reference":
        from ..model import output_loss
        return output_loss
    from .head import fused_output_loss
    return fused_output_loss


def optimizer_for(kernels: str):
    """The optimizer class of a kernel set: optim.AdamWeightDecay or its blocked version."""
    check_kernels(kernels)
    if kernels == "reference":
        from ..optim import AdamWeightDecay
        return AdamWeightDecay
    from .optim import BlockedAdamWeightDecay
    return BlockedAdamWeightDecay


def build_model(cfg, params=None, seed=0, dtype=None, kernels="fast"):
    """BERT4Rec with the given kernels ("fast" also calls ``enable()``)."""
    check_kernels(kernels)
    if kernels == "fast":
        enable()                        # first: NumPy may not be loaded yet (the spin)
    import numpy as np

    from ..model import BERT4Rec
    loss = output_loss_for(kernels)
    return BERT4Rec(cfg, params, seed=seed, dtype=dtype or np.float32, output_loss=loss)


def command_uses_fast_kernels(argv) -> bool:
    """Whether ``python -m minibert4rec ARGV`` runs the fast kernels: train, bench and
    demo do, unless given ``--kernels reference``."""
    words = [w for w in argv if not w.startswith("-")]
    command = words[0] if words else None
    reference = any(a == "--kernels=reference" or (a == "--kernels" and b == "reference")
                    for a, b in zip(argv, list(argv[1:]) + [""]))
    return command in ("train", "bench", "demo") and not reference


def check_kernels(kernels: str) -> str:
    if kernels not in KERNELS:
        raise ValueError(f"unknown kernels {kernels!r}: use 'fast' or 'reference'")
    return kernels


def __getattr__(name):
    # ``from minibert4rec.fast import fused_output_loss`` works without importing
    # NumPy when the package itself is imported.
    if name in ("fused_output_loss", "head_tiles"):
        from . import head
        return getattr(head, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
