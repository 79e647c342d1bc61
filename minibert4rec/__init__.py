"""minibert4rec: BERT4Rec from scratch in NumPy, every forward and backward written by hand.

Reading order (the teaching path, the reference maths):
    layers.py     linear, softmax, masked softmax, LayerNorm, GELU, dropout, embeddings, positions
    attention.py  scaled dot-product attention, multi-head attention
    encoder.py    feed-forward, post-LN sublayer, encoder block
    model.py      BERT4Rec: embeddings -> blocks -> output head -> loss
    gradcheck.py  finite-difference checks of every backward (public API)
then data.py, cloze.py, optim.py, settings.py, runs.py, train.py, evaluate.py,
analysis.py; cli.py is the command line. The fast path (a fused output head,
thread and memory settings) lives apart in ``minibert4rec.fast``, is switched on explicitly
(``--kernels fast``, the command line's default for train, bench and demo; the
library's own default is the reference), and is tested equal to it.
Importing this package changes nothing in the process.
"""
__version__ = "0.1.0"
