"""Training BERT4Rec: the loop, validation, checkpoints, exact resume.

One call does everything:  ``train(TrainConfig(dataset="beauty"), run_dir="runs/beauty")``.

The loop, without its bookkeeping (``_train_loop`` at the end of this file):

    model = BERT4Rec(cfg)                                    # model.py
    opt = AdamWeightDecay(model.params, lr=lr, warmup=warmup, ...)       # optim.py
    for epoch in range(epochs):
        for batch in sampler.epoch(batch_size, data_rng):    # cloze instances, cloze.py
            loss, grads = model.loss_and_grads(batch.ids, batch.sel, batch.targets,
                                               rng=dropout_rng, train=True)
            opt.step(model.params, grads)                    # clip, learning rate, update
        valid = evaluate(model.score_next, validation split, ...)   # evaluate.py, sampled
        if valid["NDCG@10"] improved: keep a copy of the weights
        write the checkpoint
    the test metrics of the kept weights -> metrics.json

Everything else here serves that loop: the settings (``TrainConfig``, the presets),
the checkpoint and exact resume, Ctrl-C and time budgets, stopping a diverged run.

A run directory holds (runs.py: the writer, the checks on reading back)
    config.json      format version, model and training settings, dataset (written first)
    items.txt        line i = the original id of item i (for `recommend`)
    checkpoint.npz   THE checkpoint, one file: weights, best weights, AdamWeightDecay's
                     moments and the state (epoch, step, batch within the epoch, random
                     generator states, best validation score, the per-epoch history)
    weights.npz      copy of the best weights so far (by validation NDCG@10, sampled protocol)
    state.json       copy of the state (the per-epoch history)
    metrics.json     test metrics of the best weights: {"sampled": {...}, "full": {...}}
The checkpoint is replaced by one rename, so after a crash, a kill or Ctrl-C at
any moment ``--resume`` continues from the last complete checkpoint (from the
start if there is none yet) and ends with the same weights as an uninterrupted
run. One process writes a folder at a time (a lock); a new run never mixes its
files with an old run's (a used folder needs ``overwrite``).

Non-finite values are never kept: a non-finite loss or gradient stops training
(TrainingStopped, naming the checkpoint that is kept), weights are checked
before every save, and a non-finite validation score is never an improvement.

Exact resume: the data generator (masks, shuffling) is saved as its state at
the START of the epoch together with the number of batches already done, and
the dropout generator as its current state; on resume the epoch's batches are
drawn again from the same state and the finished ones skipped. Training E
epochs in one go or E1 then resuming to E gives bit-identical weights.
"""
from __future__ import annotations

import contextlib
import json
import math
import os
import signal
import time
import warnings
from dataclasses import asdict, dataclass, replace

import numpy as np

from . import evaluate as ev
from . import runs
from . import fast
from .cloze import ClozeSampler
from .data import Dataset, leave_one_out, load_dataset
from .errors import InputError
from .fast import KERNELS
from .fast.threads import blas_thread_limit
from .model import BERT4Rec, Config
from .optim import AdamWeightDecay

FORMAT_VERSION = 1

# What `train --dataset NAME` trains (docs/presets.md: each choice and its evidence).
# ml-1m: the paper's / authors' values for these keys; beauty: the same except hidden
# dropout 0.3 (chosen on --holdout-validation) and 10 epochs. ml-100k: ML-1m's
# mask ratio and dropout with windows of N = 50 (step N / 2, as the authors' 0.5 N), chosen
# by validation (--holdout-validation) for a model that beats popularity within minutes.
# cloze_copies 10 is the authors' dupe_factor: an epoch is 10 cloze instances per window
# plus one mask-last instance, one pass over what their gen_data_fin.py writes (on Beauty
# this beat 1 + 1 clearly: docs/beauty.md). The demo data and unknown files keep 1 + 1.
PRESETS = {
    "beauty": dict(max_len=50, mask_ratio=0.6, max_predictions=30, sliding_step=5,
                   hidden_dropout=0.3, attention_dropout=0.2, cloze_copies=10, epochs=10),
    "ml-1m": dict(max_len=200, mask_ratio=0.2, max_predictions=40, sliding_step=100,
                  hidden_dropout=0.2, attention_dropout=0.2, cloze_copies=10, epochs=20),
    "ml-100k": dict(max_len=50, mask_ratio=0.2, max_predictions=40, sliding_step=25,
                    hidden_dropout=0.2, attention_dropout=0.2, cloze_copies=10, epochs=8),
    "synthetic": dict(max_len=20, mask_ratio=0.4, max_predictions=10, sliding_step=5,
                      hidden_dropout=0.1, attention_dropout=0.1, cloze_copies=1, epochs=20),
}
DEFAULT_PRESET = dict(max_len=50, mask_ratio=0.4, max_predictions=20, sliding_step=10,
                      hidden_dropout=0.2, attention_dropout=0.2, cloze_copies=1, epochs=20)


@dataclass
class TrainConfig:
    """Everything that defines a training run (the model's shape included)."""
    dataset: str = "synthetic"
    data_dir: str | None = None
    min_interactions: int = 3
    epochs: int | None = None              # None -> the dataset preset's
    minutes: float | None = None           # stop at this wall-time budget (resumable)
    decay_epochs: int | None = None        # the learning rate reaches 0 here (None -> epochs)
    synthetic_users: int = 2000            # size of the synthetic dataset
    synthetic_items: int = 200
    seed: int = 0
    negatives_seed: int | None = None      # the test split's sampled negatives (None -> seed);
                                           # one value for all seeds = the same test candidates
    lr: float = 1e-3                       # authors: 1e-4 (under-trains on short budgets)
    batch_size: int = 256
    warmup: int = 100
    weight_decay: float = 0.01
    clip_norm: float = 5.0
    hidden: int = 64
    layers: int = 2
    heads: int = 2
    ffn: int = 0                           # 0 -> 4 * hidden
    max_len: int | None = None             # None -> the dataset preset
    mask_ratio: float | None = None
    max_predictions: int | None = None
    sliding_step: int | None = None
    cloze_copies: int | None = None        # cloze instances per window per epoch (+1 mask-last);
                                           # None -> the preset (the authors' dupe_factor 10)
    hidden_dropout: float | None = None
    attention_dropout: float | None = None
    position: str = "learned"
    attention: str = "bidirectional"
    gelu: str = "erf"
    n_negatives: int = 100
    eval_batch_size: int = 256
    track_test: bool = False               # also evaluate the test split every epoch (curves)
    threads: int | None = None             # BLAS threads (None: NumPy's default); see fast/threads.py
    kernels: str = "reference"             # reference | fast: the output head's kernels (same
                                           # numbers); the command line's default is fast
    holdout_validation: bool = False       # True: train on seq[:-2], never on the validation item
                                           # (the authors train on it: validation is optimistic)
    progress: bool = True

    def resolved(self) -> "TrainConfig":
        """Fill the None fields from the dataset's preset and check every value."""
        preset = PRESETS.get(self.dataset, DEFAULT_PRESET)
        values = asdict(self)
        for k, v in preset.items():
            if values.get(k) is None:
                values[k] = v
        if values["decay_epochs"] is None:
            values["decay_epochs"] = values["epochs"]
        cfg = TrainConfig(**values)
        cfg.validate()
        return cfg

    def validate(self):
        def bad(msg):
            raise InputError(f"invalid training setting: {msg}")
        if self.epochs is None or self.epochs < 1:
            bad(f"epochs must be >= 1, got {self.epochs}")
        if self.decay_epochs is not None and self.decay_epochs < 1:
            bad(f"decay epochs must be >= 1, got {self.decay_epochs}")
        if self.minutes is not None and not self.minutes > 0:      # (nan is not > 0)
            bad(f"minutes must be > 0, got {self.minutes}")
        if not 0 < self.lr < math.inf:
            bad(f"lr must be > 0 and finite, got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            bad(f"weight decay must be >= 0 and finite, got {self.weight_decay}")
        if not 0 < self.clip_norm < math.inf:
            bad(f"clip norm must be > 0 and finite, got {self.clip_norm}")
        if self.batch_size < 1:
            bad(f"batch size must be >= 1, got {self.batch_size}")
        if self.eval_batch_size < 1:
            bad(f"evaluation batch size must be >= 1, got {self.eval_batch_size}")
        if not (1 <= self.synthetic_users <= 10**7 and 2 <= self.synthetic_items <= 10**6):
            bad(f"the synthetic data needs 1..10^7 users and 2..10^6 items, got "
                f"{self.synthetic_users} and {self.synthetic_items}")
        if not 0 < self.mask_ratio <= 1:
            bad(f"mask ratio must be in (0, 1], got {self.mask_ratio}")
        if self.cloze_copies < 1:
            bad(f"cloze copies must be >= 1, got {self.cloze_copies}")
        if self.max_predictions < 1:
            bad(f"max predictions must be >= 1, got {self.max_predictions}")
        if self.seed < 0:
            bad(f"seed must be >= 0, got {self.seed}")
        if self.negatives_seed is not None and self.negatives_seed < 0:
            bad(f"negatives seed must be >= 0, got {self.negatives_seed}")
        if self.warmup < 0:
            bad(f"warm-up steps must be >= 0, got {self.warmup}")
        if self.threads is not None and self.threads < 1:
            bad(f"threads must be >= 1 (or None: NumPy's default), got {self.threads}")
        if self.n_negatives < 1:
            bad(f"negatives must be >= 1, got {self.n_negatives}")
        if self.kernels not in KERNELS:
            bad(f"kernels must be fast or reference, got {self.kernels!r}")
        if self.sliding_step < 1:
            bad(f"sliding step must be >= 1, got {self.sliding_step}")
        if self.min_interactions < 3:
            bad(f"min interactions must be >= 3 (train, validation and test items), "
                f"got {self.min_interactions}")
        self.model_config(3)                # raises on D % H, N < 2, dropout, ...

    @property
    def test_seed(self) -> int:
        """Seed of the test split's sampled negatives (and tie-breaks): --negatives-seed, else --seed."""
        return self.seed if self.negatives_seed is None else self.negatives_seed

    def model_config(self, vocab_size) -> Config:
        return Config(vocab_size=vocab_size, max_len=self.max_len, hidden=self.hidden,
                      layers=self.layers, heads=self.heads, ffn=self.ffn,
                      hidden_dropout=self.hidden_dropout,
                      attention_dropout=self.attention_dropout, position=self.position,
                      attention=self.attention, gelu=self.gelu)


class TrainingStopped(Exception):
    """Training diverged (a non-finite loss, gradient, weight or validation score) and stopped;
    the message names the checkpoint that is kept."""


# ----------------------------------------------------------------------------
# Atomic file writing and checkpoints
# ----------------------------------------------------------------------------


def save_json(path, obj):
    """Write JSON through a temporary file and one rename (runs.write_json)."""
    runs.write_json(path, obj)


def save_npz(path, arrays: dict):
    """np.savez through a temporary file and one rename (runs.write_arrays)."""
    runs.write_arrays(path, arrays)


def load_npz(path) -> dict:
    """Load arrays saved by save_npz, checked first; never unpickles (runs.read_arrays)."""
    return runs.read_arrays(path)


def load_json(path):
    """The value of a JSON file, checked (runs.read_json): one-line InputError otherwise."""
    return runs.read_json(path)


def _rng_state(rng) -> dict:
    return rng.bit_generator.state


def _rng_from_state(state) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


# ----------------------------------------------------------------------------
# Checks on what a run folder holds, before anything is allocated from it
# ----------------------------------------------------------------------------


def param_shapes(cfg: Config) -> dict:
    """name -> shape of every parameter of a model of configuration ``cfg``, without building it.

    The same names and shapes as ``model.init_params`` (a test holds them equal).
    """
    V, N, D, F = cfg.vocab_size, cfg.max_len, cfg.hidden, cfg.ffn
    shapes = {"item_emb": (V, D)}
    if cfg.position == "learned":
        shapes["pos_emb"] = (N, D)
    shapes["emb_ln_g"] = shapes["emb_ln_b"] = (D,)
    for l in range(cfg.layers):
        for name in ("Wq", "Wk", "Wv", "Wo"):
            shapes[f"layer{l}.{name}"] = (D, D)
        for name in ("bq", "bk", "bv", "bo", "ln1_g", "ln1_b"):
            shapes[f"layer{l}.{name}"] = (D,)
        shapes[f"layer{l}.W1"], shapes[f"layer{l}.b1"] = (D, F), (F,)
        shapes[f"layer{l}.W2"], shapes[f"layer{l}.b2"] = (F, D), (D,)
        shapes[f"layer{l}.ln2_g"] = shapes[f"layer{l}.ln2_b"] = (D,)
    shapes["head_W"], shapes["head_b"] = (D, D), (D,)
    shapes["head_ln_g"] = shapes["head_ln_b"] = (D,)
    shapes["out_bias"] = (V,)
    return shapes


def check_fits(mcfg: Config, batch_size: int, where: str, training=True) -> None:
    """Refuse a model that cannot fit in this machine's memory, before allocating it.

    Counts the parameters from the configuration (times 5 when training: weights,
    gradients, two Adam moments, the best weights) and the largest activations
    of one batch (attention weights of every layer, the feed-forward's).
    ``where`` names the source (a file and field, or the options).
    """
    V, N, D, F, L, H = (mcfg.vocab_size, mcfg.max_len, mcfg.hidden, mcfg.ffn, mcfg.layers,
                        mcfg.heads)
    per_layer = 4 * D * D + D * F + F * D + 9 * D + F
    n_params = V * D + N * D + 4 * D + L * per_layer + D * D + 3 * D + V
    activations = L * batch_size * N * (3 * H * N + 12 * D + 3 * F)
    need = 4 * (n_params * (5 if training else 1) + activations) + L * 16 * 256  # + array headers
    have = runs.memory_bytes()
    if need > have:
        raise InputError(f"{where}: a model of vocabulary {V}, N={N}, D={D}, F={F}, L={L}, H={H} "
                         f"({n_params:.3g} parameters) needs about {need / 2**30:.3g} GiB, more than "
                         f"this machine's {have / 2**30:.3g} GiB: choose a smaller model or batch")


def _check_state(state, where: str, steps_per_epoch: int) -> dict:
    """A training state read back (from checkpoint.npz or an old state.json), checked."""
    def bad(field, msg):
        raise InputError(f"{where}: field {field}: {msg}")
    if not isinstance(state, dict):
        raise InputError(f"{where}: the training state is not an object")
    ints = {"epoch": 0, "batch": 0, "step": 0, "loss_batches": 0}
    for key, low in ints.items():
        v = state.get(key, 0 if key == "loss_batches" else None)
        if not isinstance(v, int) or isinstance(v, bool) or v < low:
            bad(key, f"expected an integer >= {low}, found {json.dumps(v)[:40]}")
    for key in ("elapsed", "best", "loss_sum"):
        v = state.get(key, 0.0 if key == "loss_sum" else None)
        if not isinstance(v, (int, float)) or isinstance(v, bool) or not math.isfinite(v):
            bad(key, f"expected a finite number, found {json.dumps(v)[:40]}")
    if state["elapsed"] < 0:
        bad("elapsed", f"expected a time >= 0, found {state['elapsed']}")
    best_epoch = state.get("best_epoch")
    if best_epoch is not None and (not isinstance(best_epoch, int) or isinstance(best_epoch, bool)
                                   or not 1 <= best_epoch <= state["epoch"]):
        bad("best_epoch", f"expected null or an epoch in 1..{state['epoch']}, found "
                          f"{json.dumps(best_epoch)[:40]}")
    history = state.get("history")
    if not isinstance(history, list) or not all(isinstance(h, dict) for h in history):
        bad("history", "expected a list of per-epoch records")
    if len(history) != state["epoch"]:
        bad("history", f"holds {len(history)} epochs, the state says {state['epoch']}")
    if state["batch"] >= steps_per_epoch:
        bad("batch", f"{state['batch']} is not below the {steps_per_epoch} batches of an epoch: "
                     f"the data or the settings changed since the checkpoint")
    if state["step"] != state["epoch"] * steps_per_epoch + state["batch"]:
        bad("step", f"{state['step']} is not epoch x {steps_per_epoch} + batch: the data or the "
                    f"settings changed since the checkpoint")
    for key in ("data_rng", "dropout_rng"):
        try:
            _rng_from_state(state.get(key))
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            bad(key, "not the state of a random generator (PCG64)")
    return state


# ----------------------------------------------------------------------------
# Loading a run back
# ----------------------------------------------------------------------------


def saved_train_config(conf: dict, where="config.json") -> TrainConfig:
    """The TrainConfig of a run's config.json dict (its "train" block), checked.

    Every field must be one of TrainConfig's, of its type and in its range
    (InputError naming ``where`` and the field otherwise). Runs saved before
    cloze_copies existed trained with 1 cloze copy per epoch.
    """
    if not isinstance(conf, dict) or "train" not in conf:
        raise InputError(f"{where}: field train is missing: not the configuration of a run")
    kw = runs.fields_from_json(TrainConfig, conf["train"], f"{where}: field train",
                               defaults={"cloze_copies": 1})
    try:
        return TrainConfig(**kw).resolved()
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


_MODEL_FIELDS_OF_TRAIN = ("max_len", "hidden", "layers", "heads", "ffn", "hidden_dropout",
                          "attention_dropout", "position", "attention", "gelu")


def read_run_config(run_dir):
    """(config.json dict, TrainConfig, model Config) of a run folder, every field checked."""
    path = os.path.join(os.fspath(run_dir), runs.CONFIG)
    conf = runs.read_json(path, "run configuration (config.json)")
    if not isinstance(conf, dict):
        raise InputError(f"{path}: expected an object {{...}}, found {type(conf).__name__}")
    version = conf.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format version {version!r} is not supported "
                         f"(this minibert4rec reads version {FORMAT_VERSION})")
    if "model" not in conf:
        raise InputError(f"{path}: field model is missing: not the configuration of a run")
    kw = runs.fields_from_json(Config, conf["model"], f"{path}: field model")
    if "vocab_size" not in kw:
        raise InputError(f"{path}: field model.vocab_size is missing")
    try:
        mcfg = Config(**kw)
    except InputError as e:
        raise InputError(f"{path}: {e}") from None
    for name in ("init_std", "ln_eps"):
        if not 0 < getattr(mcfg, name) < math.inf:
            raise InputError(f"{path}: field model.{name}: must be > 0, got {getattr(mcfg, name)}")
    tcfg = saved_train_config(conf, path)
    derived = tcfg.model_config(mcfg.vocab_size)
    for name in _MODEL_FIELDS_OF_TRAIN:
        if getattr(derived, name) != getattr(mcfg, name):
            raise InputError(f"{path}: field model.{name} is {getattr(mcfg, name)!r} but "
                             f"train.{name} says {getattr(tcfg, name)!r}: incompatible checkpoint "
                             f"configuration (the file was edited)")
    dataset = conf.get("dataset", {})
    if not isinstance(dataset, dict) or not all(
            isinstance(dataset.get(k, 0), int) and not isinstance(dataset.get(k, 0), bool)
            for k in ("n_users", "n_items")):
        raise InputError(f"{path}: field dataset: expected {{name, n_users, n_items}}")
    if "n_items" in dataset and dataset["n_items"] + 2 != mcfg.vocab_size:
        raise InputError(f"{path}: field dataset.n_items is {dataset['n_items']} but "
                         f"model.vocab_size is {mcfg.vocab_size} (items + 2): the file was edited")
    return conf, tcfg, mcfg


def load_run(run_dir, which="best"):
    """Return (model, TrainConfig, run config dict) of a run directory.

    which: "best" (the best weights) or "last" (the weights of the last save),
    from checkpoint.npz, or from weights.npz / last.npz in folders written
    before checkpoint.npz existed. Everything is checked before it is used;
    non-finite weights are refused.
    """
    run_dir = os.fspath(run_dir)
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(2, "run directory not found", run_dir)
    conf, tcfg, mcfg = read_run_config(run_dir)
    check_fits(mcfg, tcfg.eval_batch_size, os.path.join(run_dir, runs.CONFIG), training=False)
    checkpoint = os.path.join(run_dir, runs.CHECKPOINT)
    legacy = os.path.join(run_dir, "weights.npz" if which == "best" else "last.npz")
    with runs.Npz(checkpoint if os.path.exists(checkpoint) else legacy) as npz:
        names = [n.split("/")[-1] for n in npz.shapes]
        layers = {n.split(".")[0] for n in names if n.startswith("layer")}
        if len(layers) != mcfg.layers:            # before listing a claimed 10^7 layers' names
            raise InputError(f"{os.path.join(run_dir, runs.CONFIG)}: field model.layers is "
                             f"{mcfg.layers}, {npz.path} holds {len(layers)} layers: "
                             f"incompatible checkpoint")
        shapes = param_shapes(mcfg)
        if npz.path == checkpoint:
            has_best = any(n.startswith("best/") for n in npz.shapes)
            part = "best" if which == "best" and has_best else "params"
            params = runs.read_checkpoint(checkpoint, shapes, parts=(part,), npz=npz)[part]
            source = f"{checkpoint} ({'best' if part == 'best' else 'last'} weights)"
        else:
            npz.check(shapes, kinds="f")
            params, source = npz.read(), legacy
    bad = runs.non_finite(params)
    if bad is not None:
        raise InputError(f"{source}: parameter {bad!r} holds non-finite values (nan or inf): "
                         f"these weights diverged; train again with a lower --lr")
    params = {k: params[k].astype(np.float32, copy=False) for k in shapes}
    return BERT4Rec(mcfg, params=params), tcfg, conf


def check_same_data(model, ds: Dataset, run_dir=None) -> None:
    """Refuse to use a model on a data set whose items are not the ones it was trained on."""
    if model.cfg.vocab_size != ds.vocab_size:
        where = f"{run_dir}: " if run_dir is not None else ""
        raise InputError(f"{where}the model knows {model.cfg.vocab_size - 2} items, the data set "
                         f"{ds.name} now has {ds.n_items}: the data file changed since training "
                         f"(the model's item ids would not match)")


def load_run_and_data(run_dir, data_dir=None, which="best", last=None):
    """(model, TrainConfig, run config dict, Dataset) of a run: ``load_run`` and the data
    set it was trained on (from ``data_dir`` when given, else where the run found it),
    refused when its items are not the model's. ``last``: the --last window of the
    attention commands, refused (before the data is read) when longer than the model's N."""
    model, tcfg, conf = load_run(run_dir, which)
    if last is not None and last > model.cfg.max_len:
        raise InputError(f"--last {last} is longer than the model's sequences: {run_dir} has "
                         f"max_len N={model.cfg.max_len}; give --last {model.cfg.max_len} or less")
    if data_dir:
        tcfg.data_dir = data_dir
    ds = dataset_of(tcfg)
    check_same_data(model, ds, run_dir)
    return model, tcfg, conf, ds


def dataset_of(tcfg: TrainConfig) -> Dataset:
    if tcfg.dataset == "synthetic" and (tcfg.synthetic_users, tcfg.synthetic_items) != (2000, 200):
        from .data import filter_min_interactions, synthetic
        return filter_min_interactions(synthetic(tcfg.synthetic_users, tcfg.synthetic_items),
                                       tcfg.min_interactions)
    return load_dataset(tcfg.dataset, tcfg.data_dir, tcfg.min_interactions)


# ----------------------------------------------------------------------------
# Evaluation of a model on a split
# ----------------------------------------------------------------------------


def evaluate_model(model, histories, targets, popularity, protocol="both", negatives=None,
                   seed=0, batch_size=256, progress=False, desc="evaluate", n_negatives=100):
    """Metrics of ``model`` predicting ``targets`` after ``histories`` (see evaluate.py)."""
    return ev.evaluate(model.score_next, histories, targets, protocol=protocol,
                       negatives=negatives, popularity=popularity, seed=seed,
                       n_negatives=n_negatives,
                       batch_size=batch_size, progress=progress, desc=desc,
                       candidate_fn=model.score_candidates)


def test_metrics(model, ds: Dataset, split=None, protocol="both", seed=0, batch_size=256,
                 progress=False, n_negatives=100):
    """The paper's protocol on the test split (last item of every user)."""
    check_same_data(model, ds)
    split = split or leave_one_out(ds)
    return evaluate_model(model, split.test_input, split.test_target, ds.popularity(), protocol,
                          seed=seed, batch_size=batch_size, progress=progress, desc="test",
                          n_negatives=n_negatives)


def popularity_metrics(ds: Dataset, split=None, protocol="both", seed=0, n_negatives=100):
    split = split or leave_one_out(ds)
    return ev.evaluate(ev.popularity_scorer(ds.popularity()), split.test_input, split.test_target,
                       protocol=protocol, popularity=ds.popularity(), seed=seed,
                       n_negatives=n_negatives)


# ----------------------------------------------------------------------------
# The training loop
# ----------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_overflows():
    """No NumPy overflow warnings while training: a step that overflows makes a non-finite
    loss, gradient, weight or score, which the guard reports in one line (TrainingStopped).
    (A warnings filter, not np.errstate: it also covers the fast path's worker threads.)"""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=RuntimeWarning,
                                message=r"(overflow|invalid value|divide by zero) encountered")
        yield


class _Interrupt:
    """Turns SIGINT into a flag, so a step is never cut in half; a second Ctrl-C aborts."""

    def __init__(self):
        self.requested = False

    def __enter__(self):
        self._old = signal.getsignal(signal.SIGINT)
        try:
            signal.signal(signal.SIGINT, self._handle)
        except ValueError:          # not in the main thread: leave the handler alone
            self._old = None
        return self

    def _handle(self, signum, frame):
        if self.requested:
            raise KeyboardInterrupt
        self.requested = True

    def __exit__(self, *exc):
        if self._old is not None:
            signal.signal(signal.SIGINT, self._old)


def validation_negatives(split, popularity, n_negatives, seed):
    """(U, n_negatives) sampled negatives for the validation item of every user.

    Like the test's, they avoid every item the user interacted with: the
    validation input, the validation item AND the test item (not in the
    validation input, but the user's all the same).
    """
    everything = [np.append(h, t) for h, t in zip(split.valid_input, split.test_target)]
    return ev.sample_negatives(everything, split.valid_target, popularity, n_negatives, seed=seed)


def train(tcfg: TrainConfig, run_dir, resume=False, log=print, overwrite=False):
    """Train (or resume) a run; see _train. ``tcfg.threads`` limits BLAS threads meanwhile.

    With ``tcfg.kernels == "fast"`` the fast path's process-wide settings are
    switched on first (``minibert4rec.fast.enable``).
    """
    if tcfg.kernels == "fast":
        fast.enable()
    with blas_thread_limit(tcfg.threads):
        return _train(tcfg, run_dir, resume, log, overwrite)


def _absolute_paths(tcfg: TrainConfig) -> TrainConfig:
    """The data file and data folder as absolute paths, so the run works from any folder."""
    from .data import NAMED_DATASETS
    dataset, data_dir = tcfg.dataset, tcfg.data_dir
    if dataset not in NAMED_DATASETS and os.path.isfile(os.path.expanduser(dataset)):
        dataset = os.path.abspath(os.path.expanduser(dataset))
    if data_dir:
        data_dir = os.path.abspath(os.path.expanduser(data_dir))
    return replace(tcfg, dataset=dataset, data_dir=data_dir)


def _read_checkpoint_of(run_dir, shapes, steps_per_epoch):
    """(params, best, moments, state, legacy?) of a run's last complete checkpoint, or None.

    checkpoint.npz, else the three files of earlier versions (last.npz,
    optimizer.npz, state.json), else None: nothing saved yet, start at the beginning.
    """
    path = os.path.join(run_dir, runs.CHECKPOINT)
    if os.path.exists(path):
        c = runs.read_checkpoint(path, shapes)
        state = _check_state(c["state"], path, steps_per_epoch)
        params, best, moments = c["params"], c["best"], c["moments"]
        legacy = False
    else:
        old = [os.path.join(run_dir, n) for n in ("last.npz", "optimizer.npz", "state.json")]
        present = [os.path.exists(p) for p in old]
        if not any(present):
            return None
        if not all(present):
            have = ", ".join(os.path.basename(p) for p, e in zip(old, present) if e)
            raise InputError(f"{run_dir}: holds an incomplete checkpoint of an earlier version "
                             f"({have} only): it cannot be resumed; train again with --overwrite")
        state = _check_state(runs.read_json(old[2]), old[2], steps_per_epoch)
        params = runs.read_arrays(old[0], shapes, kinds="f")
        moments = runs.read_arrays(old[1], {f"{p}/{k}": s for p in "mv" for k, s in shapes.items()},
                                   kinds="f")
        best = None
        if state["best_epoch"] is not None:
            best = runs.read_arrays(os.path.join(run_dir, "weights.npz"), shapes, kinds="f")
        legacy = True
    for name, arrays in (("weights", params), ("best weights", best), ("moments", moments)):
        bad = runs.non_finite(arrays or {})
        if bad is not None:
            raise InputError(f"{path}: the checkpoint's {name} hold non-finite values ({bad!r}): "
                             f"train again with --overwrite and a lower --lr")
    return params, best, moments, state, legacy


def _train(tcfg: TrainConfig, run_dir, resume=False, log=print, overwrite=False):
    """Train (or resume) a run; returns the test metrics dict written to metrics.json.

    Stops after ``tcfg.epochs`` epochs in total, at the ``tcfg.minutes`` budget,
    or on Ctrl-C; the last two save a resumable checkpoint first. After Ctrl-C
    it returns None at once (no test evaluation); a second Ctrl-C aborts.
    A resume takes from ``tcfg`` only epochs (None: the run's own), minutes,
    threads, kernels, data_dir and progress; the rest is the run's config.json.
    """
    from tqdm import tqdm          # (tqdm.auto warns in notebooks without ipywidgets)

    run_dir = os.fspath(run_dir)
    folder = checkpoint = None
    try:
        if resume:
            folder = runs.RunFolder.open(run_dir)    # the lock; a missing folder is not created
            _, old_cfg, saved_mcfg = read_run_config(run_dir)
            epochs = tcfg.epochs if tcfg.epochs is not None else old_cfg.epochs
            # the run's own settings, except the length, the budget and where the data is;
            # the decay horizon stays (so resuming is exact) unless training now goes past it
            decay = max(old_cfg.decay_epochs or old_cfg.epochs, epochs)
            if decay != old_cfg.decay_epochs:
                log(f"note: the learning-rate decay now ends at epoch {decay} (was {old_cfg.decay_epochs})")
            data_dir = _absolute_paths(tcfg).data_dir if tcfg.data_dir else old_cfg.data_dir
            tcfg = replace(old_cfg, epochs=epochs, minutes=tcfg.minutes, decay_epochs=decay,
                           progress=tcfg.progress, threads=tcfg.threads, kernels=tcfg.kernels,
                           data_dir=data_dir)
        else:
            runs.check_out_folder(run_dir, overwrite)     # before the (slow) data loading
            tcfg = _absolute_paths(tcfg)
        tcfg = tcfg.resolved()
        ds = dataset_of(tcfg)
        split = leave_one_out(ds)
        mcfg = tcfg.model_config(ds.vocab_size)
        if resume:
            if saved_mcfg.vocab_size != ds.vocab_size:
                raise InputError(f"{run_dir}: the checkpoint has vocabulary {saved_mcfg.vocab_size}, "
                                 f"the dataset {tcfg.dataset!r} now has {ds.vocab_size}: incompatible")
            mcfg = saved_mcfg
        check_fits(mcfg, tcfg.batch_size, os.path.join(run_dir, runs.CONFIG) if resume else
                   "the model options (--hidden, --layers, --max-len, --batch-size)")
        train_seqs = split.valid_input if tcfg.holdout_validation else split.train
        sampler = ClozeSampler(train_seqs, mcfg.max_len, tcfg.mask_ratio, tcfg.max_predictions,
                               tcfg.sliding_step, ds.mask_id, copies=tcfg.cloze_copies)
        steps_per_epoch = sampler.n_batches(tcfg.batch_size)
        popularity = ds.popularity()
        try:
            valid_neg = validation_negatives(split, popularity, tcfg.n_negatives, tcfg.seed)
        except InputError as e:
            raise InputError(f"{tcfg.dataset}: too few items for the sampled protocol's "
                             f"{tcfg.n_negatives} negatives per user ({e}); give --negatives N "
                             f"with a smaller N") from None

        conf = {"format_version": FORMAT_VERSION, "model": mcfg.to_dict(), "train": asdict(tcfg),
                "dataset": {"name": ds.name, "n_users": ds.n_users, "n_items": ds.n_items}}
        items = "\n".join(map(str, ds.raw_item_ids)) + "\n"
        if resume:
            checkpoint = _read_checkpoint_of(run_dir, param_shapes(mcfg), steps_per_epoch)
            if runs.read_json(folder.file(runs.CONFIG)) != conf:
                folder.write_json(runs.CONFIG, conf)          # the new length, budget, data dir
            if not os.path.exists(folder.file(runs.ITEMS)):
                folder.write_text(runs.ITEMS, items)
        else:
            folder = runs.RunFolder.create(run_dir, conf, overwrite)
            folder.write_text(runs.ITEMS, items)
        return _train_loop(tcfg, mcfg, ds, split, sampler, steps_per_epoch, valid_neg, folder,
                           checkpoint, log, tqdm)
    finally:
        if folder is not None:
            folder.close()


def _train_loop(tcfg, mcfg, ds, split, sampler, steps_per_epoch, valid_neg, folder, checkpoint,
                log, tqdm):
    """The epochs of _train, in a run folder it holds; checkpoint: what _read_checkpoint_of read."""
    run_dir = folder.path
    state = best_params = None
    if checkpoint is None:
        model = BERT4Rec(mcfg, seed=tcfg.seed)
    else:
        params, best_params, moments, state, legacy = checkpoint
        model = BERT4Rec(mcfg, params={k: v.astype(np.float32, copy=False) for k, v in params.items()})
    Optimizer = AdamWeightDecay                   # optim.py; the loss is model.output_loss
    if tcfg.kernels == "fast":                    # the same numbers, faster: minibert4rec/fast
        model.output_loss = fast.output_loss_for("fast")
        Optimizer = fast.optimizer_for("fast")
    opt = Optimizer(model.params, lr=tcfg.lr, weight_decay=tcfg.weight_decay, warmup=tcfg.warmup,
                    total_steps=steps_per_epoch * tcfg.decay_epochs, clip_norm=tcfg.clip_norm)
    popularity = ds.popularity()

    if state is None:
        state = {"epoch": 0, "batch": 0, "step": 0, "elapsed": 0.0, "best": -1.0,
                 "best_epoch": None, "history": [],
                 "data_rng": _rng_state(np.random.default_rng([tcfg.seed, 1])),
                 "dropout_rng": _rng_state(np.random.default_rng([tcfg.seed, 2]))}
    else:
        opt.load_state_arrays(moments, state["step"])
        if legacy:                 # one checkpoint.npz from the files of an earlier version
            folder.commit(model.params, best_params, opt.state_arrays(), state)
        else:                      # weights.npz and state.json as the checkpoint says
            folder.publish(model.params, best_params, state)
    saved = dict(state) if checkpoint is not None else None     # the checkpoint on disk
    dropout_rng = _rng_from_state(state["dropout_rng"])

    def diverged(what, epoch=None):
        if saved is not None:
            kept = (f"the last good checkpoint, {folder.file(runs.CHECKPOINT)} (epoch "
                    f"{saved['epoch']}, batch {saved['batch']}), is kept"
                    + (f", and the best weights (epoch {saved['best_epoch']}) in "
                       f"{folder.file(runs.WEIGHTS)}" if saved["best_epoch"] else ""))
        else:
            kept = f"no checkpoint was saved yet ({run_dir} holds the settings only)"
        raise TrainingStopped(
            f"{run_dir}: training diverged: {what} at step {state['step']} (epoch "
            f"{epoch or state['epoch'] + 1}); {kept}. Resuming would diverge again at the same step: "
            f"train again with a lower --lr (this run: {tcfg.lr:g}) and --overwrite")

    def save(weights_changed=True):
        nonlocal saved
        state["dropout_rng"] = _rng_state(dropout_rng)
        bad = runs.non_finite(model.params)
        if bad is not None:
            diverged(f"parameter {bad!r} became non-finite")
        folder.commit(model.params, best_params, opt.state_arrays(), state,
                      publish_weights=weights_changed or best_params is None)
        saved = {k: state[k] for k in ("epoch", "batch", "best_epoch")}

    def validate():
        broken = []

        def scores(histories, candidates):    # a model that scores nan or inf is broken
            s = model.score_candidates(histories, candidates)
            if not np.isfinite(s).all():
                broken.append(True)
            return s
        valid = ev.evaluate(model.score_next, split.valid_input, split.valid_target,
                            protocol="sampled", negatives=valid_neg, popularity=popularity,
                            seed=tcfg.seed, n_negatives=tcfg.n_negatives,
                            batch_size=tcfg.eval_batch_size, candidate_fn=scores)["sampled"]
        if broken:
            diverged("the validation scores became non-finite", epoch=state["epoch"])
        return valid

    log(f"{ds.name}: {ds.n_users} users, {ds.n_items} items; {len(sampler.lengths)} windows, "
        f"{sampler.n_instances} instances and {steps_per_epoch} steps per epoch; "
        f"model D={mcfg.hidden} L={mcfg.layers} H={mcfg.heads} N={mcfg.max_len}")
    started = time.perf_counter() - state["elapsed"]
    stop_reason = None
    if state["epoch"] >= tcfg.epochs:
        log(f"{run_dir} has trained {state['epoch']} epochs already, --epochs is {tcfg.epochs}: "
            f"nothing to train (give a larger --epochs to continue)")
    with _Interrupt() as interrupt, _quiet_overflows():
        while state["epoch"] < tcfg.epochs and stop_reason is None:
            epoch_rng = _rng_from_state(state["data_rng"])        # the epoch-start state
            batches = sampler.epoch(tcfg.batch_size, epoch_rng)
            bar = tqdm(total=steps_per_epoch, initial=state["batch"], disable=not tcfg.progress,
                       desc=f"epoch {state['epoch'] + 1}/{tcfg.epochs}", unit="batch",
                       dynamic_ncols=True, leave=False)
            seen, t_epoch = 0, time.perf_counter()
            # the epoch's loss so far: a sum and a count, kept in the checkpoint so that an
            # epoch resumed after Ctrl-C reports the mean over ALL its batches
            state.setdefault("loss_sum", 0.0)
            state.setdefault("loss_batches", 0)
            for i, batch in enumerate(batches):
                if i < state["batch"]:
                    continue                                       # done before the resume
                loss, grads = model.loss_and_grads(batch.ids, batch.sel, batch.targets,
                                                   rng=dropout_rng, train=True)
                if not np.isfinite(loss):
                    bar.close()
                    diverged(f"the loss became {loss}")
                norm = opt.step(model.params, grads)
                if not np.isfinite(norm):
                    bar.close()
                    diverged("the gradient norm became non-finite")
                state["step"] += 1
                state["batch"] = i + 1
                state["loss_sum"] += float(loss)
                state["loss_batches"] += 1
                seen += len(batch.lengths)
                rate = seen / max(1e-9, time.perf_counter() - t_epoch)
                bar.update(1)
                bar.set_postfix(loss=f"{loss:.3f}", seq_s=f"{rate:.0f}", refresh=False)
                state["elapsed"] = time.perf_counter() - started
                if interrupt.requested:
                    stop_reason = "interrupted (Ctrl-C)"
                    break
                if tcfg.minutes is not None and state["elapsed"] >= tcfg.minutes * 60:
                    stop_reason = f"time budget of {tcfg.minutes} minutes reached"
                    break
            bar.close()
            if stop_reason is not None and state["batch"] < steps_per_epoch:
                save(weights_changed=False)                        # mid-epoch, resumable
                log(f"{stop_reason}: saved a resumable checkpoint at epoch {state['epoch'] + 1}, "
                    f"batch {state['batch']}/{steps_per_epoch} in {run_dir}")
                break
            # the epoch is complete
            bad = runs.non_finite(model.params)
            if bad is not None:
                diverged(f"parameter {bad!r} became non-finite")
            state["epoch"] += 1
            state["batch"] = 0
            state["data_rng"] = _rng_state(epoch_rng)              # next epoch's start state
            t_eval = time.perf_counter()
            valid = validate()
            record = {"epoch": state["epoch"], "step": state["step"],
                      "minutes": round(state["elapsed"] / 60, 3),
                      "loss": (state["loss_sum"] / state["loss_batches"]
                               if state["loss_batches"] else None), "valid": valid}
            state["loss_sum"], state["loss_batches"] = 0.0, 0
            if tcfg.track_test:
                record["test"] = test_metrics(model, ds, split, "sampled", tcfg.test_seed,
                                              tcfg.eval_batch_size,
                                              n_negatives=tcfg.n_negatives)["sampled"]
            # the evaluations' share of the time (the next epoch's "minutes" include it)
            record["eval_minutes"] = round((time.perf_counter() - t_eval) / 60, 3)
            state["history"].append(record)
            improved = math.isfinite(valid["NDCG@10"]) and valid["NDCG@10"] > state["best"]
            if improved:
                state["best"], state["best_epoch"] = valid["NDCG@10"], state["epoch"]
                best_params = {k: v.copy() for k, v in model.params.items()}
            save(weights_changed=improved)
            log(f"epoch {state['epoch']:3d}  loss {record['loss']:.4f}  valid HR@10 "
                f"{valid['HR@10']:.4f} NDCG@10 {valid['NDCG@10']:.4f}"
                + (f"  test HR@10 {record['test']['HR@10']:.4f} NDCG@10 {record['test']['NDCG@10']:.4f}"
                   if "test" in record else "")
                + f"  [{record['minutes']:.1f} min]" + ("  *best*" if improved else ""))
    if stop_reason is not None and stop_reason.startswith("interrupted"):
        log(f"resume with: python -m minibert4rec train --resume {run_dir} --epochs {tcfg.epochs}")
        return None
    best, _, _ = load_run(run_dir, "best")
    metrics = test_metrics(best, ds, split, "both", tcfg.test_seed, tcfg.eval_batch_size,
                           n_negatives=tcfg.n_negatives)
    folder.write_json(runs.METRICS, metrics)
    return metrics


__all__ = ["TrainConfig", "PRESETS", "train", "load_run", "test_metrics", "popularity_metrics",
           "evaluate_model", "load_npz", "save_npz", "save_json", "load_json", "TrainingStopped",
           "dataset_of", "read_run_config", "param_shapes", "check_fits", "check_same_data",
           "load_run_and_data"]
