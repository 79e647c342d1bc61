"""The authors' optimizer: BERT's AdamWeightDecay, a warmup-then-linear-decay
learning rate, and clipping by the global gradient norm.

AdamWeightDecay (optimization.py of BERT), for every parameter p with gradient g:

    m = beta1 m + (1 - beta1) g
    v = beta2 v + (1 - beta2) g^2
    u = m / (sqrt(v) + eps)              NO bias correction (unlike Adam)
    u = u + weight_decay * p             decoupled decay, not for LayerNorm or biases
    p = p - lr * u

Learning rate at step s (counted from 0):
    lr * s / warmup                      while s < warmup
    lr * (1 - s / total_steps)           afterwards, reaching 0 at the last step
"""
from __future__ import annotations

import numpy as np



def decays(name: str) -> bool:
    """Weight decay applies to weight matrices and embeddings, not LayerNorm or biases."""
    short = name.rsplit(".", 1)[-1]
    if "ln" in short:                      # LayerNorm gamma and beta
        return False
    if short.startswith("b") or short.endswith("_b") or short.endswith("bias"):
        return False                       # bq bk bv bo b1 b2 head_b out_bias
    return True


def global_norm(grads: dict) -> float:
    """sqrt(sum over all gradients of sum(g^2))."""
    return float(np.sqrt(sum(float(np.vdot(g, g)) for g in grads.values())))


def clip_by_global_norm(grads: dict, max_norm: float) -> float:
    """Scale all gradients in place so their global norm is at most max_norm; return the norm before."""
    norm = global_norm(grads)
    if max_norm and norm > max_norm:
        scale = max_norm / (norm + 1e-6)
        for g in grads.values():
            g *= scale
    return norm


def learning_rate(step: int, lr: float, warmup: int, total_steps: int) -> float:
    """The learning rate of update number ``step`` (0, 1, ...): a linear rise from 0 to
    ``lr`` over the first ``warmup`` steps, then a linear decay to 0 at ``total_steps``
    (the decay counts from step 0, as in BERT: after warm-up it starts a little below ``lr``)."""
    if warmup and step < warmup:
        return lr * step / warmup
    return lr * max(0.0, 1.0 - step / max(1, total_steps))


class AdamWeightDecay:
    """State: the moments m and v by parameter name, and the step count."""

    def __init__(self, params: dict, lr=1e-3, beta1=0.9, beta2=0.999, eps=1e-6,
                 weight_decay=0.01, warmup=100, total_steps=10_000, clip_norm=5.0):
        self.lr, self.beta1, self.beta2, self.eps = lr, beta1, beta2, eps
        self.weight_decay, self.warmup, self.total_steps, self.clip_norm = (
            weight_decay, warmup, total_steps, clip_norm)
        self.m = {k: np.zeros_like(v) for k, v in params.items()}
        self.v = {k: np.zeros_like(v) for k, v in params.items()}
        self.step_count = 0

    def current_lr(self) -> float:
        """The learning rate the next ``step`` will use (``learning_rate`` at step_count)."""
        return learning_rate(self.step_count, self.lr, self.warmup, self.total_steps)

    def step(self, params: dict, grads: dict) -> float:
        """Clip, then update every parameter in place. Returns the gradient norm before clipping."""
        norm = clip_by_global_norm(grads, self.clip_norm)
        lr = self.current_lr()
        for k, p in params.items():
            self._update(p, grads[k], self.m[k], self.v[k], lr,
                         self.weight_decay if decays(k) else 0.0)
        self.step_count += 1
        return norm

    def _update(self, p, g, m, v, lr, decay):
        """AdamWeightDecay on one parameter, in place (p, g, m, v: same shape).

        In-place operations (``m *= b1`` rather than ``m = b1 * m``) update the
        moments and the parameter without new arrays for them."""
        b1, b2 = self.beta1, self.beta2
        m *= b1
        m += (1 - b1) * g
        v *= b2
        v += (1 - b2) * (g * g)
        u = np.sqrt(v)
        u += self.eps
        np.divide(m, u, out=u)                      # m / (sqrt(v) + eps)
        if decay:
            u += decay * p
        u *= lr
        p -= u

    def state_arrays(self) -> dict:
        """Moments as a flat dict for np.savez ('m/name', 'v/name')."""
        out = {f"m/{k}": v for k, v in self.m.items()}
        out.update({f"v/{k}": v for k, v in self.v.items()})
        return out

    def load_state_arrays(self, arrays: dict, step_count: int):
        """Restore the moments from ``state_arrays``' dict (each 'm/name', 'v/name' the
        shape of params[name]) and the number of steps taken (for the schedule)."""
        for k in self.m:
            self.m[k][...] = arrays[f"m/{k}"]
            self.v[k][...] = arrays[f"v/{k}"]
        self.step_count = int(step_count)
