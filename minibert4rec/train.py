"""Training BERT4Rec: the loop, validation, checkpoints, exact resume.

One call does everything:  ``train(TrainConfig(dataset="beauty"), run_dir="runs/beauty")``.

A run directory holds
    config.json      format version, model and training settings, dataset
    weights.npz      the best weights so far (by validation NDCG@10, sampled protocol)
    last.npz         the weights at the last save (for resuming)
    optimizer.npz    AdamWeightDecay's moments at the last save
    state.json       epoch, step, batch within the epoch, random generator states,
                     best validation score, the per-epoch history
    items.txt        line i = the original id of item i (for `recommend`)
    metrics.json     test metrics of the best weights: {"sampled": {...}, "full": {...}}
Every file is written to a temporary name and renamed into place, so a crash
or Ctrl-C while saving never destroys the previous checkpoint.

Exact resume: the data generator (masks, shuffling) is saved as its state at
the START of the epoch together with the number of batches already done, and
the dropout generator as its current state; on resume the epoch's batches are
drawn again from the same state and the finished ones skipped. Training E
epochs in one go or E1 then resuming to E gives bit-identical weights.
"""
from __future__ import annotations

import json
import os
import signal
import time
from dataclasses import asdict, dataclass, replace

import numpy as np

from . import evaluate as ev
from . import fast
from .cloze import ClozeSampler
from .data import Dataset, leave_one_out, load_dataset
from .errors import InputError
from .fast import KERNELS
from .fast.threads import blas_thread_limit
from .model import BERT4Rec, Config
from .optim import AdamWeightDecay

FORMAT_VERSION = 1

# The paper's / authors' settings per dataset (reference table), plus a small
# preset for the synthetic demo data. cloze_copies 10 is the authors' dupe_factor:
# an epoch is 10 cloze instances per window plus one mask-last instance, one pass
# over what their gen_data_fin.py writes (on Beauty this beat 1 + 1 clearly:
# README). The demo data and unknown files keep 1 + 1 (short epochs).
PRESETS = {
    "beauty": dict(max_len=50, mask_ratio=0.6, max_predictions=30, sliding_step=5,
                   hidden_dropout=0.5, attention_dropout=0.2, cloze_copies=10),
    "ml-1m": dict(max_len=200, mask_ratio=0.2, max_predictions=40, sliding_step=100,
                  hidden_dropout=0.2, attention_dropout=0.2, cloze_copies=10),
    "ml-100k": dict(max_len=200, mask_ratio=0.2, max_predictions=40, sliding_step=100,
                    hidden_dropout=0.2, attention_dropout=0.2, cloze_copies=10),
    "synthetic": dict(max_len=20, mask_ratio=0.4, max_predictions=10, sliding_step=5,
                      hidden_dropout=0.1, attention_dropout=0.1, cloze_copies=1),
}
DEFAULT_PRESET = dict(max_len=50, mask_ratio=0.4, max_predictions=20, sliding_step=10,
                      hidden_dropout=0.2, attention_dropout=0.2, cloze_copies=1)


@dataclass
class TrainConfig:
    """Everything that defines a training run (the model's shape included)."""
    dataset: str = "synthetic"
    data_dir: str | None = None
    min_interactions: int = 3
    epochs: int = 20
    minutes: float | None = None           # stop at this wall-time budget (resumable)
    decay_epochs: int | None = None        # the learning rate reaches 0 here (None -> epochs)
    synthetic_users: int = 2000            # size of the synthetic dataset
    synthetic_items: int = 200
    seed: int = 0
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
        if self.minutes is not None and self.minutes <= 0:
            bad(f"minutes must be > 0, got {self.minutes}")
        if not self.lr > 0:
            bad(f"lr must be > 0, got {self.lr}")
        if self.batch_size < 1:
            bad(f"batch size must be >= 1, got {self.batch_size}")
        if not 0 < self.mask_ratio <= 1:
            bad(f"mask ratio must be in (0, 1], got {self.mask_ratio}")
        if self.cloze_copies < 1:
            bad(f"cloze copies must be >= 1, got {self.cloze_copies}")
        if self.max_predictions < 1:
            bad(f"max predictions must be >= 1, got {self.max_predictions}")
        if self.seed < 0:
            bad(f"seed must be >= 0, got {self.seed}")
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

    def model_config(self, vocab_size) -> Config:
        return Config(vocab_size=vocab_size, max_len=self.max_len, hidden=self.hidden,
                      layers=self.layers, heads=self.heads, ffn=self.ffn,
                      hidden_dropout=self.hidden_dropout,
                      attention_dropout=self.attention_dropout, position=self.position,
                      attention=self.attention, gelu=self.gelu)


class TrainingStopped(Exception):
    """Training ended early on purpose (non-finite loss); the message says why."""


# ----------------------------------------------------------------------------
# Atomic file writing and checkpoints
# ----------------------------------------------------------------------------


def _atomic_write(path, write):
    """Call write(tmp_path), then rename tmp_path to path (atomic on POSIX)."""
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        write(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def save_json(path, obj):
    def write(tmp):
        with open(tmp, "w") as f:
            json.dump(obj, f, indent=1)
            f.flush()
            os.fsync(f.fileno())
    _atomic_write(path, write)


def save_npz(path, arrays: dict):
    def write(tmp):
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
            f.flush()
            os.fsync(f.fileno())
    _atomic_write(path, write)


def load_npz(path) -> dict:
    """Load arrays saved by save_npz; never unpickles (a file needing pickle is refused)."""
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "checkpoint file not found", path)
    with open(path, "rb") as f:
        magic = f.read(2)
    if magic not in (b"PK", b"\x80", b""):   # .npz is a zip file; \x80 opens a pickle
        raise InputError(f"{path}: not a checkpoint file (a .npz zip archive of arrays); "
                         f"it starts with {magic!r}")
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except ValueError as e:
        if "pickle" in str(e).lower():
            raise InputError(f"{path}: refusing to load: the file contains Python objects "
                             f"(pickle), which could run code; checkpoints hold plain arrays only")
        raise InputError(f"{path}: not a valid checkpoint file ({e})")
    except Exception as e:  # zipfile.BadZipFile, EOFError, OSError, ...
        raise InputError(f"{path}: truncated or corrupt checkpoint file ({type(e).__name__}: {e})")


def load_json(path) -> dict:
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(2, "file not found", path)
    try:
        with open(path) as f:
            return json.load(f)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})")


def _rng_state(rng) -> dict:
    return rng.bit_generator.state


def _rng_from_state(state) -> np.random.Generator:
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


# ----------------------------------------------------------------------------
# Loading a run back
# ----------------------------------------------------------------------------


def saved_train_config(conf: dict) -> TrainConfig:
    """The TrainConfig of a run's config.json dict (its "train" block).

    Runs saved before cloze_copies existed trained with 1 cloze copy per epoch.
    """
    return TrainConfig(**{"cloze_copies": 1, **conf["train"]})


def load_run(run_dir, which="best"):
    """Return (model, TrainConfig, run config dict) of a run directory.

    which: "best" (weights.npz) or "last" (last.npz).
    """
    cfg_path = os.path.join(run_dir, "config.json")
    if not os.path.isdir(run_dir):
        raise FileNotFoundError(2, "run directory not found", os.fspath(run_dir))
    conf = load_json(cfg_path)
    version = conf.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{cfg_path}: checkpoint format version {version!r} is not supported "
                         f"(this minibert4rec reads version {FORMAT_VERSION})")
    try:
        tcfg = saved_train_config(conf)
        mcfg = Config(**conf["model"])
    except (KeyError, TypeError) as e:
        raise InputError(f"{cfg_path}: incompatible configuration ({e})")
    weights = load_npz(os.path.join(run_dir, "weights.npz" if which == "best" else "last.npz"))
    expected = BERT4Rec(mcfg, seed=0).params
    for name, arr in expected.items():
        if name not in weights:
            raise InputError(f"{run_dir}: checkpoint lacks parameter {name!r}: it was written "
                             f"for a different model configuration")
        if weights[name].shape != arr.shape:
            raise InputError(f"{run_dir}: parameter {name!r} has shape {weights[name].shape}, "
                             f"the configuration needs {arr.shape}: incompatible checkpoint")
    extra = set(weights) - set(expected)
    if extra:
        raise InputError(f"{run_dir}: checkpoint has unknown parameters {sorted(extra)[:3]}: "
                         f"it was written for a different model configuration")
    params = {k: weights[k].astype(np.float32) for k in expected}
    return BERT4Rec(mcfg, params=params), tcfg, conf


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


def train(tcfg: TrainConfig, run_dir, resume=False, log=print):
    """Train (or resume) a run; see _train. ``tcfg.threads`` limits BLAS threads meanwhile.

    With ``tcfg.kernels == "fast"`` the fast path's process-wide settings are
    switched on first (``minibert4rec.fast.enable``).
    """
    if tcfg.kernels == "fast":
        fast.enable()
    with blas_thread_limit(tcfg.threads):
        return _train(tcfg, run_dir, resume, log)


def _train(tcfg: TrainConfig, run_dir, resume=False, log=print):
    """Train (or resume) a run; returns the test metrics dict written to metrics.json.

    Stops after ``tcfg.epochs`` epochs in total, at the ``tcfg.minutes`` budget,
    or on Ctrl-C; the last two save a resumable checkpoint first. After Ctrl-C
    it returns None at once (no test evaluation); a second Ctrl-C aborts.
    """
    from tqdm import tqdm          # (tqdm.auto warns in notebooks without ipywidgets)

    os.makedirs(run_dir, exist_ok=True)
    state = None
    if resume:
        model, old_cfg, _ = load_run(run_dir, which="last")
        # the run's own settings, except the length, the budget and where the data is;
        # the decay horizon stays (so resuming is exact) unless training now goes past it
        decay = max(old_cfg.decay_epochs or old_cfg.epochs, tcfg.epochs)
        if decay != old_cfg.decay_epochs:
            log(f"note: the learning-rate decay now ends at epoch {decay} (was {old_cfg.decay_epochs})")
        tcfg = replace(old_cfg, epochs=tcfg.epochs, minutes=tcfg.minutes, decay_epochs=decay,
                       progress=tcfg.progress, threads=tcfg.threads, kernels=tcfg.kernels,
                       data_dir=tcfg.data_dir or old_cfg.data_dir)
        state = load_json(os.path.join(run_dir, "state.json"))
    tcfg = tcfg.resolved()
    ds = dataset_of(tcfg)
    split = leave_one_out(ds)
    mcfg = tcfg.model_config(ds.vocab_size)
    if not resume:
        model = BERT4Rec(mcfg, seed=tcfg.seed)
    model.output_loss = fast.output_loss_for(tcfg.kernels)     # the same numbers either way
    if resume and model.cfg.vocab_size != ds.vocab_size:
        raise InputError(f"{run_dir}: the checkpoint has vocabulary {model.cfg.vocab_size}, the "
                         f"dataset {tcfg.dataset!r} now has {ds.vocab_size}: incompatible")
    train_seqs = split.valid_input if tcfg.holdout_validation else split.train
    sampler = ClozeSampler(train_seqs, mcfg.max_len, tcfg.mask_ratio, tcfg.max_predictions,
                           tcfg.sliding_step, ds.mask_id, copies=tcfg.cloze_copies)
    steps_per_epoch = sampler.n_batches(tcfg.batch_size)
    opt = AdamWeightDecay(model.params, lr=tcfg.lr, weight_decay=tcfg.weight_decay,
                          warmup=tcfg.warmup, total_steps=steps_per_epoch * tcfg.decay_epochs,
                          clip_norm=tcfg.clip_norm)
    popularity = ds.popularity()
    try:
        valid_neg = validation_negatives(split, popularity, tcfg.n_negatives, tcfg.seed)
    except InputError as e:
        raise InputError(f"{tcfg.dataset}: too few items for the sampled protocol's "
                         f"{tcfg.n_negatives} negatives per user ({e}); give --negatives N "
                         f"with a smaller N") from None

    conf = {"format_version": FORMAT_VERSION, "model": mcfg.to_dict(), "train": asdict(tcfg),
            "dataset": {"name": ds.name, "n_users": ds.n_users, "n_items": ds.n_items}}
    save_json(os.path.join(run_dir, "config.json"), conf)
    items_path = os.path.join(run_dir, "items.txt")
    if not os.path.exists(items_path):
        _atomic_write(items_path, lambda tmp: open(tmp, "w").write(
            "\n".join(map(str, ds.raw_item_ids)) + "\n"))

    if state is None:
        state = {"epoch": 0, "batch": 0, "step": 0, "elapsed": 0.0, "best": -1.0,
                 "best_epoch": None, "history": [],
                 "data_rng": _rng_state(np.random.default_rng([tcfg.seed, 1])),
                 "dropout_rng": _rng_state(np.random.default_rng([tcfg.seed, 2]))}
    else:
        opt.load_state_arrays(load_npz(os.path.join(run_dir, "optimizer.npz")), state["step"])
    dropout_rng = _rng_from_state(state["dropout_rng"])

    def save(tag="last"):
        state["dropout_rng"] = _rng_state(dropout_rng)
        save_npz(os.path.join(run_dir, "last.npz"), model.params)
        save_npz(os.path.join(run_dir, "optimizer.npz"), opt.state_arrays())
        save_json(os.path.join(run_dir, "state.json"), state)

    def validate():
        return evaluate_model(model, split.valid_input, split.valid_target, popularity,
                              "sampled", negatives=valid_neg, seed=tcfg.seed,
                              n_negatives=tcfg.n_negatives,
                              batch_size=tcfg.eval_batch_size)["sampled"]

    log(f"{ds.name}: {ds.n_users} users, {ds.n_items} items; {len(sampler.lengths)} windows, "
        f"{sampler.n_instances} instances and {steps_per_epoch} steps per epoch; "
        f"model D={mcfg.hidden} L={mcfg.layers} H={mcfg.heads} N={mcfg.max_len}")
    started = time.perf_counter() - state["elapsed"]
    stop_reason = None
    if state["epoch"] >= tcfg.epochs:
        log(f"{run_dir} has trained {state['epoch']} epochs already, --epochs is {tcfg.epochs}: "
            f"nothing to train (give a larger --epochs to continue)")
    with _Interrupt() as interrupt:
        while state["epoch"] < tcfg.epochs and stop_reason is None:
            epoch_rng = _rng_from_state(state["data_rng"])        # the epoch-start state
            batches = sampler.epoch(tcfg.batch_size, epoch_rng)
            bar = tqdm(total=steps_per_epoch, initial=state["batch"], disable=not tcfg.progress,
                       desc=f"epoch {state['epoch'] + 1}/{tcfg.epochs}", unit="batch",
                       dynamic_ncols=True, leave=False)
            seen, t_epoch = 0, time.perf_counter()
            # the epoch's loss so far: a sum and a count, kept in state.json so that an
            # epoch resumed after Ctrl-C reports the mean over ALL its batches
            state.setdefault("loss_sum", 0.0)
            state.setdefault("loss_batches", 0)
            for i, batch in enumerate(batches):
                if i < state["batch"]:
                    continue                                       # done before the resume
                loss, grads = model.loss_and_grads(batch.ids, batch.sel, batch.targets,
                                                   rng=dropout_rng, train=True)
                if not np.isfinite(loss):
                    raise TrainingStopped(f"loss became {loss} at step {state['step']} "
                                          f"(epoch {state['epoch'] + 1}); the last good "
                                          f"checkpoint in {run_dir} is kept. Try a lower --lr.")
                norm = opt.step(model.params, grads)
                if not np.isfinite(norm):
                    raise TrainingStopped(f"non-finite gradient norm at step {state['step']}; "
                                          f"the last good checkpoint in {run_dir} is kept")
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
                save()                                             # mid-epoch, resumable
                log(f"{stop_reason}: saved a resumable checkpoint at epoch {state['epoch'] + 1}, "
                    f"batch {state['batch']}/{steps_per_epoch} in {run_dir}")
                break
            # the epoch is complete
            state["epoch"] += 1
            state["batch"] = 0
            state["data_rng"] = _rng_state(epoch_rng)              # next epoch's start state
            valid = validate()
            record = {"epoch": state["epoch"], "step": state["step"],
                      "minutes": round(state["elapsed"] / 60, 3),
                      "loss": (state["loss_sum"] / state["loss_batches"]
                               if state["loss_batches"] else None), "valid": valid}
            state["loss_sum"], state["loss_batches"] = 0.0, 0
            if tcfg.track_test:
                record["test"] = test_metrics(model, ds, split, "sampled", tcfg.seed,
                                              tcfg.eval_batch_size,
                                              n_negatives=tcfg.n_negatives)["sampled"]
            state["history"].append(record)
            improved = valid["NDCG@10"] > state["best"]
            if improved:
                state["best"], state["best_epoch"] = valid["NDCG@10"], state["epoch"]
                save_npz(os.path.join(run_dir, "weights.npz"), model.params)
            save()
            log(f"epoch {state['epoch']:3d}  loss {record['loss']:.4f}  valid HR@10 "
                f"{valid['HR@10']:.4f} NDCG@10 {valid['NDCG@10']:.4f}"
                + (f"  test HR@10 {record['test']['HR@10']:.4f} NDCG@10 {record['test']['NDCG@10']:.4f}"
                   if "test" in record else "")
                + f"  [{record['minutes']:.1f} min]" + ("  *best*" if improved else ""))
    if not os.path.exists(os.path.join(run_dir, "weights.npz")):
        save_npz(os.path.join(run_dir, "weights.npz"), model.params)   # stopped before epoch 1
    if stop_reason is not None and stop_reason.startswith("interrupted"):
        log(f"resume with: python -m minibert4rec train --resume {run_dir} --epochs {tcfg.epochs}")
        return None
    best, _, _ = load_run(run_dir, "best")
    metrics = test_metrics(best, ds, split, "both", tcfg.seed, tcfg.eval_batch_size,
                           n_negatives=tcfg.n_negatives)
    save_json(os.path.join(run_dir, "metrics.json"), metrics)
    return metrics


__all__ = ["TrainConfig", "PRESETS", "train", "load_run", "test_metrics", "popularity_metrics",
           "evaluate_model", "load_npz", "save_npz", "save_json", "load_json", "TrainingStopped",
           "dataset_of"]
