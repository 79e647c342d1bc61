"""minibert4rec: BERT4Rec from scratch in NumPy, every forward and backward written by hand.

Reading order (the teaching path):
    layers.py     linear, embeddings, positional encodings, LayerNorm, GELU, dropout, softmax
    attention.py  scaled dot-product attention, multi-head attention
    encoder.py    feed-forward, post-LN sublayer, encoder block
    model.py      BERT4Rec: embeddings -> blocks -> output head -> loss
    gradcheck.py  finite-difference checks of every backward (public API)
"""
import os as _os
import sys as _sys

# OpenBLAS's idle worker threads busy-wait for 2**OPENBLAS_THREAD_TIMEOUT cycles
# after each call (default 28: ~0.1 s), which takes a core away from the output
# head's two Python threads (threads.run_split_blas). 16 (~25 us) lets them go.
# OpenBLAS reads the variable once, when NumPy loads it: set only if NumPy is
# not loaded yet and the user has not chosen a value.
if "numpy" not in _sys.modules:
    _os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "16")

__version__ = "0.1.0"
