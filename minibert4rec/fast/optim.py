"""The fast path's AdamWeightDecay: the same update, in cache-sized blocks on two threads.

The reference ``optim.AdamWeightDecay`` updates each parameter as a whole
array: for the 3.5 M-entry item table every one of its eight element-wise
operations is a pass over 14 MB that goes to main memory. Here each
parameter is cut into blocks of BLOCK_ELEMENTS entries (256 KB of float32:
the temporaries stay in the L2 cache), and the blocks are shared between
``threads.SPLIT_THREADS`` Python threads (NumPy releases the GIL inside its
loops). Every element goes through exactly the same operations, so the result
is the reference's bit for bit (tested).
"""
from __future__ import annotations

from ..optim import AdamWeightDecay
from . import threads

BLOCK_ELEMENTS = 1 << 16   # entries per block: 256 KB of float32


class BlockedAdamWeightDecay(AdamWeightDecay):
    """``optim.AdamWeightDecay`` with ``_update`` run block by block on two threads."""

    def _update(self, p, g, m, v, lr, decay):
        arrays = (p, g, m, v)
        if p.size <= BLOCK_ELEMENTS or not all(a.flags.c_contiguous for a in arrays):
            super()._update(p, g, m, v, lr, decay)          # small, or not blockable: whole
            return
        flat = [a.reshape(-1) for a in arrays]               # views: writes reach p, m, v
        whole_update = super()._update

        def update_blocks(starts):
            for s in starts:
                whole_update(*(a[s:s + BLOCK_ELEMENTS] for a in flat), lr, decay)
        threads.run_split(update_blocks, range(0, p.size, BLOCK_ELEMENTS))
