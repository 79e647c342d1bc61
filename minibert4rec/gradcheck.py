"""Finite-difference gradient checking (public API).

A backward pass is right when it computes the vector-Jacobian product (VJP):
given a random upstream gradient ``dout`` (same shape as the output), the
gradient of the scalar

    S(x) = sum(forward(x) * dout)

with respect to every input and parameter. We estimate that gradient
numerically with centred differences, one element at a time,

    dS/dx_i  ~  (S(x + h e_i) - S(x - h e_i)) / (2 h),     h = 1e-5, float64,

and compare it with the hand-written backward. A random ``dout`` (never all
ones) makes sure every output element, and every mixing between them, is
tested.

Typical use in a course's own test::

    from minibert4rec.gradcheck import check_gradients

    def fwd(a):                       # a: dict of float64 arrays by name
        return my_layer_forward(a["x"], a["W"], a["b"])      # -> (out, cache)

    def bwd(dout, cache):
        dx, dW, db = my_layer_backward(dout, cache)
        return {"x": dx, "W": dW, "b": db}

    for r in check_gradients(fwd, bwd, {"x": x, "W": W, "b": b}):
        assert r.passed, r

The forward must be deterministic: if it uses dropout, create the random
generator inside ``fwd`` from a fixed seed, so every call drops the same units.
"""
from __future__ import annotations

import copy
import functools
import math
from dataclasses import asdict, dataclass, field

import numpy as np

# The step: a centred difference's truncation error is ~h^2 f''' ~ 1e-10 and its
# round-off ~eps / h ~ 1e-11 (float64 eps 2e-16): h = 1e-5 keeps both small.
DEFAULT_H = 1e-5
DEFAULT_TOL = 1e-7   # layers reach ~1e-10 to 1e-8 here; a wrong backward gives ~1e-2 or worse,
                     # the subtlest ones ~1e-6 (a loss divided by sum(w) instead of sum(w) + 1e-5)
MASKED_ROW_TOL = 1e-6  # a row whose keys are ALL masked: adding layers.MASK_VALUE (-10000) moves
                       # the scores to ~1e4, where float64's spacing is ~2e-12, so a nudge h = 1e-5
                       # keeps only ~7 digits: the check reaches ~2e-8 there, not ~1e-11
MODEL_TOL = 1e-6     # the whole model chains ~30 layers: round-off grows to ~2e-7
FLOOR = 1e-2         # below this size a gradient is compared absolutely (see rel_error)


def rel_error(a, b, floor=FLOOR) -> float:
    """Relative error of b against a, scaled by the size of the whole tensor:

        max_i |a_i - b_i|  /  max(floor, max_i (|a_i| + |b_i|))

    Scaling by the tensor (not element by element) keeps entries whose true
    gradient is exactly 0 (e.g. padded positions) from turning the round-off
    of a finite difference (~1e-11) into a "100 %" error. The floor does the
    same for a tensor whose gradient is zero EVERYWHERE: the key bias bk of
    attention (softmax ignores q.bk, a constant added to a whole row of
    scores). Gradients larger than the floor are compared relatively; smaller
    ones absolutely, to floor * tolerance (1e-9 for the default tolerance).
    """
    a, b = np.asarray(a, dtype=np.float64), np.asarray(b, dtype=np.float64)
    if a.shape != b.shape:
        raise ValueError(f"shapes differ: {a.shape} vs {b.shape}")
    if a.size == 0:
        return 0.0
    return float(np.max(np.abs(a - b)) / max(floor, float(np.max(np.abs(a) + np.abs(b)))))


def numerical_vjp(f, x, dout, h=DEFAULT_H, indices=None):
    """Centred-difference gradient of sum(f() * dout) with respect to array ``x``.

    f: a function of no arguments that reads ``x`` (perturbed in place here)
    x: float64 array, any strides;  dout: array shaped like f()'s output
    indices: optional iterable of flat (C-order) indices to check (default: every
             element); unchecked entries are returned as NaN.
    Returns an array shaped like x.
    """
    grad = np.full(x.shape, np.nan) if indices is not None else np.zeros(x.shape)
    for i in (range(x.size) if indices is None else indices):
        at = np.unravel_index(i, x.shape)   # x[at], not x.reshape(-1)[i]: for a transposed
        old = x[at]                         # x, reshape copies and the nudge would be lost
        x[at] = old + h
        # np.array copies: a forward may return a view of x (dropout in eval mode,
        # split_heads), which the next nudge would otherwise change under our feet
        plus = np.array(f(), dtype=np.float64)
        x[at] = old - h
        minus = np.array(f(), dtype=np.float64)
        x[at] = old
        # subtract the outputs BEFORE weighting and summing: the large common
        # part cancels exactly, so less round-off survives than in S(+) - S(-)
        grad[at] = np.sum((plus - minus) * dout) / (2 * h)
    return grad


@dataclass
class CheckResult:
    component: str
    tensor: str
    max_rel_error: float
    passed: bool          # max_rel_error < tol
    tol: float

    def as_dict(self):
        return asdict(self)


def check_gradients(forward, backward, arrays, *, component="", seed=0, h=DEFAULT_H,
                    tol=DEFAULT_TOL, names=None, max_checks=None):
    """Check every gradient a backward returns against finite differences.

    forward(arrays) -> (out, cache): reads the float64 arrays of the dict ``arrays``
    backward(dout, cache) -> dict name -> gradient, for the arrays to check
    names: which arrays to check (default: every key ``backward`` returns, so an
           array it leaves out is not checked: pass ``names=list(arrays)`` to
           require a gradient for every array)
    max_checks: check at most this many random elements per array (default: all)

    Returns a list of CheckResult, one per checked array. A random ``dout``
    (standard normal, seeded) is used as the upstream gradient.
    """
    for k, v in arrays.items():
        if not (isinstance(v, np.ndarray) and v.dtype == np.float64):
            raise TypeError(f"gradient checks need float64 arrays; {k!r} is "
                            f"{getattr(v, 'dtype', type(v))}")
    rng = np.random.default_rng(seed)
    out, cache = forward(arrays)
    dout = rng.standard_normal(np.shape(out))
    analytic = backward(dout.copy(), cache)
    results = []
    for name in (names or list(analytic)):
        if name not in arrays:
            raise ValueError(f"{component} {name}: not one of the arrays ({', '.join(arrays)}): "
                             f"the backward returned a gradient for an array the forward does "
                             f"not take, or names lists one")
        if name not in analytic:
            raise ValueError(f"{component} {name}: the backward returned no gradient for it")
        x = arrays[name]
        idx = None
        if max_checks is not None and x.size > max_checks:
            idx = rng.choice(x.size, max_checks, replace=False)
        num = numerical_vjp(lambda: forward(arrays)[0], x, dout, h, idx)
        ana = np.asarray(analytic[name], dtype=np.float64)
        if ana.shape != x.shape:
            raise ValueError(f"{component} {name}: gradient shape {ana.shape} != array shape {x.shape}")
        if idx is not None:
            num, ana = num.reshape(-1)[idx], ana.reshape(-1)[idx]
        err = rel_error(num, ana)
        results.append(CheckResult(component, name, err, bool(err < tol), tol))
    return results


# ----------------------------------------------------------------------------
# The suite: every part of minibert4rec, checked on small random inputs
# ----------------------------------------------------------------------------
# Every axis has its own size (B=2, T=5, D=12, H=3, F=20, V=11, M=4) so a
# transposition bug cannot hide, and the masks contain padding.

B, T, D, H, F, V, N = 2, 5, 12, 3, 20, 11, 7


def _suite_inputs(seed=0):
    rng = np.random.default_rng(seed)
    r = lambda *s: rng.standard_normal(s)  # noqa: E731
    ids = np.array([[3, 1, 4, 1, 5], [9, 2, 6, 0, 0]])          # (B, T), row 1 padded
    return rng, r, ids


def _with_dropout(p, seed=123):
    return np.random.default_rng(seed) if p > 0 else None


def _training_loss(kernels):
    """The training loss of ``kernels`` ("reference" or "fast"); the fast one cut into
    chunks of 3 rows and tiles of about 12 elements (3 rows x 4 columns), so that the
    tiling itself is checked."""
    from .fast import check_kernels
    if check_kernels(kernels) == "reference":
        from .model import output_loss
        return output_loss
    from .fast import fused_output_loss
    return functools.partial(fused_output_loss, chunk=3, tile=12)


def suite(seed=0, tol=DEFAULT_TOL, model_tol=MODEL_TOL, kernels="reference", model=True):
    """Gradient-check all 14 parts (and the whole model); returns a list of CheckResult.

    Parts are numbered as the sections of layers.py (1-8), attention.py (9-10),
    encoder.py (11-12) and model.py (13-14).

    kernels: "reference" (the plain layers) or "fast": the training loss (and
    the whole-model check) then use ``minibert4rec.fast``'s fused output head.
    model: False leaves out the whole-model checks (``model_checks``, three quarters
    of the time), for a quick look at the layers.
    """
    from . import attention as A
    from . import encoder as Enc
    from . import layers as Ly
    from . import model as Mo

    rng, r, ids = _suite_inputs(seed)
    key_mask = ids != 0
    res = []

    def add(component, fwd, bwd, arrays, tol=tol):
        # names=every array: a backward that leaves out a gradient fails here
        res.extend(check_gradients(fwd, bwd, arrays, component=component, seed=seed, tol=tol,
                                   names=list(arrays)))

    # 1. linear
    add("1 linear",
        lambda a: Ly.linear_forward(a["x"], a["W"], a["b"]),
        lambda d, c: dict(zip(("x", "W", "b"), Ly.linear_backward(d, c))),
        {"x": r(B, T, D), "W": r(D, F), "b": r(F)})
    # 2. softmax
    add("2 softmax",
        lambda a: Ly.softmax_forward(a["x"]),
        lambda d, c: {"x": Ly.softmax_backward(d, c)[0]}, {"x": r(B, H, T, T)})
    # 3. masked softmax (padded keys, causal, and one fully masked row)
    full_masked = key_mask.copy()
    full_masked[1] = False                                     # sequence 1: every key masked
    for label, km, causal in (("padding", key_mask, False), ("causal+padding", key_mask, True),
                              ("all keys masked", full_masked, False)):
        m = Ly.additive_mask(km, causal=causal, dtype=np.float64)
        add(f"3 masked softmax ({label})",
            lambda a, m=m: Ly.masked_softmax_forward(a["scores"], m),
            lambda d, c: {"scores": Ly.masked_softmax_backward(d, c)[0]},
            {"scores": r(B, H, T, T)},
            tol=max(tol, MASKED_ROW_TOL) if label == "all keys masked" else tol)
    # 4. LayerNorm (eps 1e-5 here: with 1e-12 a float64 check is equally fine, but
    #    a larger eps also exercises that eps sits inside the square root)
    add("4 layernorm",
        lambda a: Ly.layernorm_forward(a["x"], a["g"], a["b"], eps=1e-5),
        lambda d, c: dict(zip(("x", "g", "b"), Ly.layernorm_backward(d, c))),
        {"x": r(B, T, D), "g": r(D), "b": r(D)})
    # 5. GELU, both forms
    for form in ("erf", "tanh"):
        add(f"5 gelu ({form})",
            lambda a, form=form: Ly.gelu_forward(a["x"], form),
            lambda d, c: {"x": Ly.gelu_backward(d, c)[0]}, {"x": r(B, T, F)})
    # 6. dropout (fixed seed inside the forward: the same units drop every call)
    add("6 dropout",
        lambda a: Ly.dropout_forward(a["x"], 0.3, np.random.default_rng(7), train=True),
        lambda d, c: {"x": Ly.dropout_backward(d, c)[0]}, {"x": r(B, T, D)})
    # 7. item embedding (repeated id 1, padding id 0)
    add("7 item embedding",
        lambda a: Ly.embedding_forward(ids, a["table"], padding_id=0),
        lambda d, c: {"table": Ly.embedding_backward(d, c)[0]}, {"table": r(V, D)})
    # 8. positions: learned
    add("8 learned position",
        lambda a: Ly.learned_position_forward(a["x"], a["P"]),
        lambda d, c: dict(zip(("x", "P"), Ly.learned_position_backward(d, c))),
        {"x": r(B, T, D), "P": r(N, D)})
    #    and sinusoidal (fixed table: only the input has a gradient)
    table = Ly.sinusoidal_table(N, D)
    add("8 sinusoidal position",
        lambda a: Ly.sinusoidal_position_forward(a["x"], table),
        lambda d, c: {"x": Ly.sinusoidal_position_backward(d, c)[0]}, {"x": r(B, T, D)})
    # 9. scaled dot-product attention, padding + causal, with attention dropout
    Dh = D // H
    for label, causal, p in (("padding", False, 0.0), ("causal", True, 0.0),
                             ("padding, dropout", False, 0.25)):
        m = Ly.additive_mask(key_mask, causal=causal, dtype=np.float64)
        add(f"9 attention ({label})",
            lambda a, m=m, p=p: (lambda o: (o[0], o[2]))(
                A.attention_forward(a["q"], a["k"], a["v"], m, p, _with_dropout(p))),
            lambda d, c: dict(zip(("q", "k", "v"), A.attention_backward(d, c))),
            {"q": r(B, H, T, Dh), "k": r(B, H, T, Dh), "v": r(B, H, T, Dh)})
    # 10. multi-head attention, with padding and with causal + padding masks
    mha_p = {k: (r(D, D) * 0.3 if k.startswith("W") else r(D) * 0.1) for k in A.MHA_PARAMS}
    masks = {label: Ly.additive_mask(key_mask, causal=causal, dtype=np.float64)
             for label, causal in (("padding", False), ("causal+padding", True))}

    def mha_b(d, c):
        dx, g = A.mha_backward(d, c)
        return {"x": dx, **g}
    for label, m in masks.items():
        def mha_f(a, m=m):
            out, _, c = A.mha_forward(a["x"], {k: a[k] for k in A.MHA_PARAMS}, H, m, 0.25,
                                      _with_dropout(1))
            return out, c
        add(f"10 multi-head attention ({label})", mha_f, mha_b, {"x": r(B, T, D), **mha_p})
    # 11. feed-forward
    ffn_p = {"W1": r(D, F) * 0.3, "b1": r(F) * 0.1, "W2": r(F, D) * 0.3, "b2": r(D) * 0.1}

    def ffn_b(d, c):
        dx, g = Enc.ffn_backward(d, c)
        return {"x": dx, **g}
    add("11 feed-forward", lambda a: Enc.ffn_forward(a["x"], {k: a[k] for k in ffn_p}), ffn_b,
        {"x": r(B, T, D), **ffn_p})
    # 12. the post-LN sublayer, then the full encoder block
    add("12 residual + layernorm",
        lambda a: Enc.residual_layernorm_forward(a["x"], a["y"], a["g"], a["b"], 0.25,
                                                 _with_dropout(1), eps=1e-5),
        lambda d, c: dict(zip(("x", "y", "g", "b"), Enc.residual_layernorm_backward(d, c))),
        {"x": r(B, T, D), "y": r(B, T, D), "g": r(D), "b": r(D)})
    blk_p = {**mha_p, **ffn_p, "ln1_g": 1 + 0.1 * r(D), "ln1_b": 0.1 * r(D),
             "ln2_g": 1 + 0.1 * r(D), "ln2_b": 0.1 * r(D)}

    def blk_b(d, c):
        dx, g = Enc.block_backward(d, c)
        return {"x": dx, **g}
    for label, m in masks.items():
        def blk_f(a, m=m):
            out, _, c = Enc.block_forward(a["x"], {k: a[k] for k in Enc.BLOCK_PARAMS}, H, m,
                                          0.25, 0.25, _with_dropout(1))
            return out, c
        add(f"12 encoder block ({label})", blk_f, blk_b, {"x": r(B, T, D), **blk_p})
    # 13. the output head: gather, Dense + GELU + LayerNorm, tied logits
    sel = np.array([1, 3, 5, 7])                                       # M = 4 positions of B*T
    head_p = {"head_W": r(D, D) * 0.3, "head_b": r(D) * 0.1, "head_ln_g": 1 + 0.1 * r(D),
              "head_ln_b": 0.1 * r(D)}

    def head_f(a):
        hg, c1 = Mo.gather_rows(a["h"], sel)
        n, c2 = Mo.head_transform_forward(hg, a)
        logits, c3 = Mo.tied_logits_forward(n, a["E"], a["out_bias"])
        return logits, (c1, c2, c3)

    def head_b(d, c):
        c1, c2, c3 = c
        dn, dE, dbias = Mo.tied_logits_backward(d, c3)
        dhg, g = Mo.head_transform_backward(dn, c2)
        (dh,) = Mo.gather_rows_backward(dhg, c1)
        return {"h": dh, "E": dE, "out_bias": dbias, **g}
    add("13 output head", head_f, head_b, {"h": r(B, T, D), "E": r(V, D), "out_bias": r(V), **head_p})
    #    the gather alone with a repeated row: its gradients must add up (np.add.at)
    rep = np.array([1, 1, 3])
    add("13 gather (repeated rows)",
        lambda a: Mo.gather_rows(a["h"], rep),
        lambda d, c: {"h": Mo.gather_rows_backward(d, c)[0]}, {"h": r(B, T, D)})
    # 14. the loss, with one padding slot (weight 0)
    targets = np.array([2, 7, 7, 0])
    weights = np.array([1.0, 1.0, 1.0, 0.0])
    add("14 cross-entropy loss",
        lambda a: Mo.cross_entropy_forward(a["logits"], targets, weights),
        lambda d, c: {"logits": Mo.cross_entropy_backward(float(d), c)[0]},
        {"logits": r(len(targets), V)})
    # the training loss (tied logits + loss, forward and backward in one call), with
    # a repeated target; the fast one in chunks of 3 rows and tiles of about 12 logits
    loss_fn = _training_loss(kernels)
    add(f"14 output loss (training path, {kernels})",
        lambda a: (loss_fn(a["n"], a["E"], a["b"], targets, weights)[0], None),
        lambda d, c: dict(zip(("n", "E", "b"), (float(d) * g for g in
                              loss_fn(arr["n"], arr["E"], arr["b"], targets, weights)[1:]))),
        arr := {"n": r(len(targets), D), "E": r(V, D), "b": r(V)})
    if model:
        res.extend(model_checks(seed=seed, tol=model_tol, kernels=kernels))
    return res


def model_checks(seed=0, tol=MODEL_TOL, configs=None, kernels="reference"):
    """Whole-model checks: every parameter of a tiny BERT4Rec, tied embedding included,
    with a repeated target item; ``kernels`` picks the training loss (see ``suite``)."""
    from .model import BERT4Rec, Config

    configs = configs or [
        ("model (bidirectional, learned pos)", dict(position="learned", attention="bidirectional")),
        ("model (causal, sinusoidal, tanh)", dict(position="sinusoidal", attention="causal", gelu="tanh")),
        ("model (no positions)", dict(position="none")),
    ]
    _, _, ids = _suite_inputs(seed)
    V_m = 10
    ids = np.minimum(ids, V_m - 2)              # items 1..8 (the 9 becomes 8), pad 0, [MASK] = 9
    ids[1, 3:] = 0
    ids[0, 2] = ids[1, 1] = V_m - 1             # two [MASK]ed positions ...
    sel = np.array([2, T + 1, 4])               # ... plus one ordinary position
    targets = np.array([4, 2, 4])               # item 4 is the target twice
    res = []
    for label, kw in configs:
        cfg = Config(vocab_size=V_m, max_len=N, hidden=D, layers=2, heads=H, ffn=F,
                     hidden_dropout=0.2, attention_dropout=0.2, **kw)
        model = BERT4Rec(cfg, seed=seed, dtype=np.float64, output_loss=_training_loss(kernels))
        for k in model.params:                  # move off the init so LN/bias grads are generic
            model.params[k] += 0.05 * np.random.default_rng(seed + len(k)).standard_normal(model.params[k].shape)

        def fwd(a):
            model.params = a
            loss, grads = model.loss_and_grads(ids, sel, targets, rng=np.random.default_rng(5),
                                               train=True)
            return loss, grads

        def bwd(d, grads):
            return {k: float(d) * g for k, g in grads.items()}
        res.extend(check_gradients(fwd, bwd, model.params, component=label, seed=seed, tol=tol,
                                   names=list(model.params), max_checks=60))
    return res


# ----------------------------------------------------------------------------
# Grading a student's backward: the exercises in notebooks/exercises/
# ----------------------------------------------------------------------------
# ``grade("layernorm", my_layernorm_backward)`` runs the library's forward on
# small random inputs, hands its cache to the student's backward, and compares
# every returned gradient with centred differences (float64, random upstream
# gradient), as ``check_gradients`` does. It never raises for a wrong answer:
# a backward that raises, returns too few gradients or a wrong shape, gets a
# report that says so. Shapes are drawn from ``seed`` with a different size on
# every axis (B, T, H, Dh are 2..5 in some order, D = H Dh), so a transposed
# gradient cannot pass by accident; masks contain padding, ids repeat; layers
# that act on the last axis get a 3-D and a 2-D input, dropout two rates.
# ``grade`` checks that the gradients are right, not who wrote them: a student
# who calls the library's own backward passes (notebooks/README.md, for instructors).

GRADE_TOL = DEFAULT_TOL   # right answers reach ~1e-10 here; most wrong ones 1e-3 or worse


@dataclass
class GradeResult:
    """What ``grade`` found. Printing it (or leaving it last in a cell) shows ``report``.

    name:    the graded layer
    passed:  True when every gradient (and the forward, if one was given) is right
    report:  text: per case, the relative error of every input's gradient, and which are wrong
    errors:  {(case number, input name): max relative error} (NaN when it could not be measured)
    wrong:   the inputs whose gradient is wrong, e.g. ["x"]; "forward" when the forward's
             output differs from the library's, "backward" when the backward raised or
             returned something that is not one gradient per input
    cases:   one dict per case: {"case": number, "label": shapes and options, "tol": the
             tolerance it used, "passed": bool, "errors": {input (or "forward"): error or
             None}, "problem": what went wrong with the forward or backward, or None}
    """
    name: str
    passed: bool
    report: str
    errors: dict
    wrong: list
    cases: list = field(default_factory=list)

    def as_dict(self) -> dict:
        """The result as plain JSON types (a grading script's ``json.dumps(r.as_dict())``)."""
        return {"name": self.name, "passed": self.passed, "wrong": list(self.wrong),
                "cases": copy.deepcopy(self.cases), "report": self.report}

    def __str__(self):
        return self.report

    __repr__ = __str__

    def _repr_pretty_(self, p, cycle):            # IPython: show the report, not the fields
        p.text(self.report)


@dataclass
class _Case:
    label: str                 # the shapes and options, for the report
    arrays: dict               # input name -> float64 array, the differentiable inputs in forward order
    run: object                # run(forward, arrays) -> (out, cache): calls forward with the fixed arguments
    tol: float = GRADE_TOL     # a gradient passes below this relative error


@dataclass
class _Spec:
    forward: object            # the library's forward, same signature as the student's
    backward: object           # the library's backward
    inputs: tuple              # names of the differentiable inputs, in forward order
    cases: object              # cases(rng, sizes) -> list of _Case
    about: str                 # one line for the report's head


def _grade_sizes(rng):
    """B, T, H, Dh all different (2..5, T >= 3), D = H Dh, Dout = D + 1, V = 11, M = 7: every axis its own size."""
    B, T, H, Dh = (int(s) for s in rng.permutation([2, 3, 4, 5]))
    if T == 2:                                                   # at least 3 positions: a causal mask
        B, T = T, B                                              # then differs from padding alone
    D = H * Dh
    return dict(B=B, T=T, H=H, Dh=Dh, D=D, Dout=D + 1, V=11, M=7)


def _key_mask(s, all_masked=False):
    """(B, T) bool: the last sequence ends with padding (or, all_masked, is padding only)."""
    km = np.ones((s["B"], s["T"]), dtype=bool)
    km[-1, -1] = False                                           # one padded key
    if all_masked:
        km[-1] = False                                           # a sequence of padding only
    return km


def _shape_label(arrays, extra=""):
    shapes = ", ".join(f"{k} {tuple(v.shape)}" for k, v in arrays.items())
    return shapes + (f"; {extra}" if extra else "")


def _fixed_rng(seed=11):
    return np.random.default_rng(seed)


def _grade_specs():
    """name -> _Spec for every layer ``grade`` knows; the library imported on first use."""
    from . import attention as A
    from . import layers as Ly
    from . import model as Mo

    # The element-wise and last-axis layers get a 3-D input (B, T, D) AND a 2-D one
    # (M, D), as the output head gives them: an answer that assumes three axes fails.
    def leading_shapes(s):
        return ((s["B"], s["T"]), (s["M"],))

    def linear_cases(rng, s):
        W, b = rng.standard_normal((s["D"], s["Dout"])), rng.standard_normal(s["Dout"])
        cases = []
        for lead in leading_shapes(s):
            a = {"x": rng.standard_normal((*lead, s["D"])), "W": W.copy(), "b": b.copy()}
            cases.append(_Case(_shape_label(a), a, lambda f, a: f(a["x"], a["W"], a["b"])))
        return cases

    def softmax_cases(rng, s):
        cases = []
        for lead in leading_shapes(s):
            a = {"x": 2 * rng.standard_normal((*lead, s["Dout"]))}
            cases.append(_Case(_shape_label(a), a, lambda f, a: f(a["x"])))
        return cases

    def masked_softmax_cases(rng, s):
        cases = []
        # every key masked: the scores sit at -10000, where a step of h = 1e-5 is
        # rounded to ~1e-12, so the finite difference itself is only good to ~1e-7
        for label, causal, all_masked, tol in (
                ("padding mask", False, False, GRADE_TOL),
                ("causal + padding mask", True, False, GRADE_TOL),
                ("a sequence of padding only: every key masked (passes below 1e-6: "
                 "at -10000 the finite difference is good to ~1e-7)", False, True, 1e-6)):
            m = Ly.additive_mask(_key_mask(s, all_masked), causal=causal, dtype=np.float64)
            a = {"scores": 2 * rng.standard_normal((s["B"], s["H"], s["T"], s["T"]))}
            cases.append(_Case(_shape_label(a, f"mask {tuple(m.shape)}, {label}"), a,
                               lambda f, a, m=m: f(a["scores"], m), tol))
        return cases

    def layernorm_cases(rng, s):
        cases = []
        for lead in leading_shapes(s):
            a = {"x": rng.standard_normal((*lead, s["D"])),
                 "gamma": 1 + 0.5 * rng.standard_normal(s["D"]), "beta": rng.standard_normal(s["D"])}
            cases.append(_Case(_shape_label(a, "eps 1e-5"), a,
                               lambda f, a: f(a["x"], a["gamma"], a["beta"], 1e-5)))
        return cases

    def gelu_cases(rng, s):
        cases = []
        for lead in leading_shapes(s):
            a = {"x": 1.5 * rng.standard_normal((*lead, s["D"]))}
            cases.append(_Case(_shape_label(a, "exact (erf) form"), a, lambda f, a: f(a["x"])))
        return cases

    def dropout_cases(rng, s):
        # two rates: an answer that hard-codes 1 / (1 - 0.3) fails the second
        cases = []
        for label, lead, p, train in (("p 0.3, training", (s["B"], s["T"]), 0.3, True),
                                      ("p 0.5, training", (s["M"],), 0.5, True),
                                      ("p 0.3, eval mode (the identity)", (s["B"], s["T"]), 0.3, False)):
            a = {"x": rng.standard_normal((*lead, s["D"]))}
            cases.append(_Case(_shape_label(a, label), a,
                               lambda f, a, p=p, train=train: f(a["x"], p, _fixed_rng(), train)))
        return cases

    def embedding_cases(rng, s):
        ids = rng.integers(1, s["V"], size=(s["B"], s["T"]))
        ids[0, 1] = ids[0, 0]                            # an id twice in one sequence ...
        ids[1, 0] = ids[0, 0]                            # ... and once more in another
        ids[-1, -1] = 0                                  # a padded position
        cases = []
        for label, pad in (("padding_id 0", 0), ("padding_id None", None)):
            a = {"table": rng.standard_normal((s["V"], s["D"]))}
            cases.append(_Case(_shape_label(a, f"ids {tuple(ids.shape)} with repeated ids, {label}"),
                               a, lambda f, a, pad=pad: f(ids, a["table"], pad)))
        return cases

    def attention_cases(rng, s):
        cases = []
        for label, causal, p in (("padding mask", False, 0.0), ("causal + padding mask", True, 0.0),
                                 ("padding mask, attention dropout 0.25", False, 0.25)):
            m = Ly.additive_mask(_key_mask(s), causal=causal, dtype=np.float64)
            shape = (s["B"], s["H"], s["T"], s["Dh"])
            a = {n: rng.standard_normal(shape) for n in ("q", "k", "v")}

            def run(f, a, m=m, p=p):
                res = f(a["q"], a["k"], a["v"], m, p, _fixed_rng() if p else None)
                return res[0], res[-1]                   # (out, weights, cache) -> out, cache
            cases.append(_Case(_shape_label(a, label), a, run))
        return cases

    def split_cases(rng, s):
        a = {"x": rng.standard_normal((s["B"], s["T"], s["D"]))}
        return [_Case(_shape_label(a, f"H {s['H']}"), a, lambda f, a: f(a["x"], s["H"]))]

    def merge_cases(rng, s):
        a = {"x": rng.standard_normal((s["B"], s["H"], s["T"], s["Dh"]))}
        return [_Case(_shape_label(a), a, lambda f, a: f(a["x"]))]

    def loss_inputs(rng, s):
        targets = rng.integers(1, s["V"], size=s["M"])
        targets[1] = targets[0]                          # a repeated target item
        weights = np.ones(s["M"])
        weights[-1] = 0.0                                # a padding slot
        return targets, weights

    def cross_entropy_cases(rng, s):
        targets, weights = loss_inputs(rng, s)
        cases = []
        for label, w in (("weights with a padding slot (0)", weights), ("weights all 1", np.ones(s["M"]))):
            a = {"logits": 2 * rng.standard_normal((s["M"], s["V"]))}
            cases.append(_Case(_shape_label(a, f"targets {tuple(targets.shape)} with a repeat, {label}"),
                               a, lambda f, a, w=w: f(a["logits"], targets, w)))
        return cases

    def tied_inputs(rng, s):
        return {"n": rng.standard_normal((s["M"], s["D"])), "E": rng.standard_normal((s["V"], s["D"])),
                "out_bias": rng.standard_normal(s["V"])}

    def tied_logits_cases(rng, s):
        a = tied_inputs(rng, s)
        return [_Case(_shape_label(a), a, lambda f, a: f(a["n"], a["E"], a["out_bias"]))]

    def output_loss_cases(rng, s):
        targets, weights = loss_inputs(rng, s)
        a = tied_inputs(rng, s)
        return [_Case(_shape_label(a, f"targets {tuple(targets.shape)} with a repeat, "
                                      "weights with a padding slot (0)"), a,
                      lambda f, a: f(a["n"], a["E"], a["out_bias"], targets, weights))]

    def split_heads_forward(x, H):
        return A.split_heads(x, H), H

    def merge_heads_forward(x):
        return A.merge_heads(x), x.shape[1]

    def output_loss_forward(n, E, out_bias, targets, weights):
        probs, _ = Ly.softmax_forward(n @ E.T + out_bias)
        loss = Mo.output_loss(n, E, out_bias, targets, weights)[0]
        return loss, (n, E, out_bias, targets, weights, probs)

    def output_loss_backward(dloss, cache):
        _, dn, dE, dout_bias = Mo.output_loss(*cache[:5])
        return dloss * dn, dloss * dE, dloss * dout_bias

    return {
        "linear": _Spec(Ly.linear_forward, Ly.linear_backward, ("x", "W", "b"), linear_cases,
                        "out = x W + b"),
        "gelu": _Spec(Ly.gelu_forward, Ly.gelu_backward, ("x",), gelu_cases,
                      "out = x Phi(x), the exact (erf) GELU"),
        "dropout": _Spec(Ly.dropout_forward, Ly.dropout_backward, ("x",), dropout_cases,
                         "out = x * keep / (1 - p) (a fixed generator: the same units drop every call)"),
        "layernorm": _Spec(Ly.layernorm_forward, Ly.layernorm_backward, ("x", "gamma", "beta"),
                           layernorm_cases, "out = gamma (x - mean) / sqrt(var + eps) + beta"),
        "softmax": _Spec(Ly.softmax_forward, Ly.softmax_backward, ("x",), softmax_cases,
                         "y = softmax(x) over the last axis"),
        "masked_softmax": _Spec(Ly.masked_softmax_forward, Ly.masked_softmax_backward, ("scores",),
                                masked_softmax_cases, "weights = softmax(scores + mask)"),
        "attention": _Spec(A.attention_forward, A.attention_backward, ("q", "k", "v"), attention_cases,
                           "out = Dropout(softmax(q k^T / sqrt(Dh) + mask)) v"),
        "split_heads": _Spec(split_heads_forward, lambda dout, H: (A.merge_heads(dout),), ("x",),
                             split_cases, "(B, T, D) -> (B, H, T, Dh); cache: H"),
        "merge_heads": _Spec(merge_heads_forward, lambda dout, H: (A.split_heads(dout, H),), ("x",),
                             merge_cases, "(B, H, T, Dh) -> (B, T, D); cache: H"),
        "embedding": _Spec(Ly.embedding_forward, Ly.embedding_backward, ("table",), embedding_cases,
                           "out = table[ids] (zero at the padding id)"),
        "cross_entropy": _Spec(Mo.cross_entropy_forward, Mo.cross_entropy_backward, ("logits",),
                               cross_entropy_cases,
                               "loss = sum_m w_m (-log softmax(logits_m)[target_m]) / (sum_m w_m + 1e-5)"),
        "tied_logits": _Spec(Mo.tied_logits_forward, Mo.tied_logits_backward, ("n", "E", "out_bias"),
                             tied_logits_cases, "logits = n E^T + out_bias"),
        "output_loss": _Spec(output_loss_forward, output_loss_backward, ("n", "E", "out_bias"),
                             output_loss_cases,
                             "loss = cross-entropy of softmax(n E^T + out_bias) (model.output_loss); "
                             "cache: (n, E, out_bias, targets, weights, probs)"),
    }


GRADE_NAMES = ("linear", "gelu", "dropout", "layernorm", "softmax", "masked_softmax", "attention",
               "split_heads", "merge_heads", "embedding", "cross_entropy", "tied_logits", "output_loss")


def _where(err):
    """' (in f, line N: <source>)': the innermost line of the student's own code that raised.

    Frames inside NumPy, SciPy, the standard library and this package are passed
    over (an error deep inside np.einsum is reported at the student's call).
    """
    import linecache
    import os
    import sysconfig
    import traceback

    import scipy
    frames = traceback.extract_tb(err.__traceback__)[1:]        # [0] is grade's own call
    if not frames:
        return ""
    not_theirs = tuple(os.path.dirname(os.path.abspath(m.__file__)) + os.sep for m in (np, scipy)) + (
        os.path.abspath(sysconfig.get_paths()["stdlib"]) + os.sep, os.path.dirname(os.path.abspath(__file__)) + os.sep)
    theirs = [f for f in frames if not os.path.abspath(f.filename).startswith(not_theirs)]
    f = (theirs or frames)[-1]
    line = (f.line or linecache.getline(f.filename, f.lineno)).strip()
    return f" (in {f.name}, line {f.lineno}: {line})" if line else f" (in {f.name}, line {f.lineno})"


def _problem(err, who):
    if isinstance(err, NotImplementedError):
        return f"your {who} is not written yet (it raised NotImplementedError{': ' + str(err) if str(err) else ''})"
    return f"your {who} raised {type(err).__name__}: {err}{_where(err)}"


def _as_gradients(result, inputs, arrays):
    """The backward's result as {input: float64 array}, or a message saying what is wrong with it."""
    want = ", ".join(f"d{n}" for n in inputs)
    if not isinstance(result, (tuple, list)):
        got = "None" if result is None else f"a {type(result).__name__}"
        return None, (f"your backward returned {got}; return a tuple ({want}{',' if len(inputs) == 1 else ''}), "
                      f"one gradient per input in the forward's order, as every backward of the library")
    if len(result) != len(inputs):
        return None, (f"your backward returned {len(result)} value(s); expected {len(inputs)}: ({want})")
    grads, bad = {}, {}                                   # bad: input -> what is wrong with its gradient
    for name, g in zip(inputs, result):
        if g is None:
            bad[name] = "is None: return the gradient of every input"
            continue
        try:
            g = np.asarray(g, dtype=np.float64)
        except (TypeError, ValueError):
            bad[name] = f"is a {type(g).__name__}, not an array"
            continue
        if g.shape != arrays[name].shape:
            bad[name] = f"has shape {g.shape}; {name} (and so d{name}) has shape {arrays[name].shape}"
            continue
        grads[name] = g
    return grads, bad


def grade(name, backward, forward=None, seed=0):
    """Grade a backward written for the library's layer ``name`` (see GRADE_NAMES).

    backward(dout, cache) -> one gradient per differentiable input, in the forward's
        order, as a tuple (the library's ``<name>_backward`` signature; e.g. for
        "layernorm": (dx, dgamma, dbeta))
    forward: optional, the student's own forward with the library's signature
        (``<name>_forward``); its output is compared with the library's, and its
        cache is what ``backward`` receives. Default: the library's forward.
    seed: picks the shapes and the random inputs.

    For every case (random shapes, masks with padding, repeated ids where the
    layer has them) it checks each gradient against centred differences of
    sum(forward(...) * dout) in float64, dout random. Returns a GradeResult:
    ``passed``, and a ``report`` naming every wrong gradient. It does not raise
    when the backward does: the report says what happened.
    """
    specs = _grade_specs()
    if name not in specs:
        raise ValueError(f"grade knows {', '.join(GRADE_NAMES)}; not {name!r}")
    spec = specs[name]
    rng = np.random.default_rng(seed)
    sizes = _grade_sizes(rng)
    fwd = forward if forward is not None else spec.forward
    lines, errors, wrong = [], {}, []

    def mark(what):
        if what not in wrong:
            wrong.append(what)

    records = []
    for i, case in enumerate(spec.cases(rng, sizes), 1):
        lines.append(f"  case {i}: {case.label}")
        record = {"case": i, "label": case.label, "tol": case.tol, "passed": False,
                  "errors": {}, "problem": None}
        records.append(record)
        fresh = lambda: {k: v.copy() for k, v in case.arrays.items()}  # noqa: E731
        case_ok = True
        if forward is not None:                                       # the student's forward first
            try:
                got = case.run(forward, fresh())
                if not (isinstance(got, tuple) and len(got) == 2):
                    raise TypeError(f"it returned {type(got).__name__}, not the pair (out, cache)")
                out_ref = np.asarray(case.run(spec.forward, fresh())[0], dtype=np.float64)
                out_s = np.asarray(got[0], dtype=np.float64)
            except Exception as err:                                  # noqa: BLE001 (reported)
                record["problem"] = _problem(err, "forward")
                lines.append(f"    {'forward':<9s} {record['problem']}")
                mark("forward")
                continue
            if out_s.shape != out_ref.shape:
                record["problem"] = f"forward output shape {out_s.shape}, the library's {out_ref.shape}"
                lines.append(f"    {'forward':<9s} output shape {out_s.shape}, the library's {out_ref.shape}  WRONG")
                mark("forward")
                continue
            err = rel_error(out_ref, out_s)
            ok = err < GRADE_TOL
            errors[(i, "forward")] = err
            record["errors"]["forward"] = err if math.isfinite(err) else None
            lines.append(f"    {'forward':<9s} relative error {err:.1e} against the library's forward  "
                         f"{'ok' if ok else 'WRONG'}")
            if not ok:
                mark("forward")
                case_ok = False
                record["problem"] = "the forward's output differs from the library's"
        out, cache = case.run(fwd, fresh())
        scalar = np.ndim(out) == 0
        case_rng = np.random.default_rng([seed, i])    # the same dout whatever earlier cases did
        dout = float(case_rng.standard_normal()) if scalar else case_rng.standard_normal(np.shape(out))
        try:
            result = backward(dout if scalar else dout.copy(), cache)
        except Exception as err:                                      # noqa: BLE001 (reported)
            record["problem"] = _problem(err, "backward")
            lines.append(f"    {record['problem']}")
            mark("backward")
            continue
        grads, bad = _as_gradients(result, spec.inputs, case.arrays)
        if grads is None:
            record["problem"] = bad
            lines.append(f"    {bad}")
            mark("backward")
            continue
        for n in spec.inputs:
            x = case.arrays[n]
            if n in bad:
                lines.append(f"    d{n:<8s} {bad[n]}  WRONG")
                errors[(i, n)] = float("nan")
                record["errors"][n] = None
                record["problem"] = "; ".join(filter(None, [record["problem"], f"d{n} {bad[n]}"]))
                mark(n)
                case_ok = False
                continue
            num = numerical_vjp(lambda: case.run(fwd, case.arrays)[0], x, dout)
            err = rel_error(num, grads[n])
            ok = bool(err < case.tol)                                 # NaN compares False: wrong
            errors[(i, n)] = err
            record["errors"][n] = err if math.isfinite(err) else None
            lines.append(f"    d{n:<8s} max relative error {err:.1e}  {'ok' if ok else 'WRONG'}")
            if not ok:
                mark(n)
                case_ok = False
        record["passed"] = case_ok
    passed = not wrong
    head = [f"grade({name!r}): {'PASSED' if passed else 'FAILED'}   [{spec.about}]",
            f"  float64, centred differences (h = {DEFAULT_H:g}) against a random upstream gradient, "
            f"seed {seed}; a gradient passes below {GRADE_TOL:.0e} (right ones reach ~1e-10)"]
    if not passed:
        named = [f"d{w} (the gradient of {w})" for w in wrong if w not in ("forward", "backward")]
        if "forward" in wrong:
            named.insert(0, "the forward (its output differs from the library's)")
        if "backward" in wrong:
            named.append("your backward (see above)")
        lines.append("  wrong: " + "; ".join(named))
    return GradeResult(name, passed, "\n".join(head + lines), errors, wrong, records)
