"""minibert4rec: BERT4Rec from scratch in NumPy, every forward and backward written by hand.

Reading order (the teaching path):
    layers.py     linear, embeddings, positional encodings, LayerNorm, GELU, dropout, softmax
    attention.py  scaled dot-product attention, multi-head attention
    encoder.py    feed-forward, post-LN sublayer, encoder block
    model.py      BERT4Rec: embeddings -> blocks -> output head -> loss
    gradcheck.py  finite-difference checks of every backward (public API)
"""
__version__ = "0.1.0"
