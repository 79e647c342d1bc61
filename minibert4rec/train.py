"""Training BERT4Rec: the loop, validation, checkpoints, exact resume.

One call does everything:

    from minibert4rec.settings import TrainConfig
    from minibert4rec.train import train
    metrics = train(TrainConfig(dataset="beauty"), run_dir="runs/beauty")

The loop, without its bookkeeping (``_train_loop``, after ``train`` and ``_train``):

    model = BERT4Rec(cfg)                                    # model.py
    opt = AdamWeightDecay(model.params, lr=lr, warmup=warmup, ...)       # optim.py
    for epoch in range(epochs):
        for batch in sampler.epoch(batch_size, data_rng):    # cloze instances, cloze.py
            loss, grads = model.loss_and_grads(batch.ids, batch.sel, batch.targets,
                                               rng=dropout_rng, train=True)
            opt.step(model.params, grads)                    # clip, learning rate, update
        valid = evaluate(model.score_next, validation split, protocol="sampled",   # evaluate.py
                         candidate_fn=model.score_candidates)   # 100 negatives + the true item
        if valid["NDCG@10"] improved: keep a copy of the weights
        write the checkpoint
    the test metrics of the kept weights -> metrics.json

Everything else here serves that loop: the checkpoint and exact resume, Ctrl-C and time
budgets, stopping a diverged run. The settings (``TrainConfig``, the presets) are in
settings.py; reading a run folder back (``load_run``) in runs.py.

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
import math
import os
import signal
import time
import warnings
from dataclasses import asdict, replace

import numpy as np
from tqdm import tqdm           # (not tqdm.auto: it warns in a Jupyter without ipywidgets)

from . import evaluate as ev
from . import fast
from . import runs
from .cloze import ClozeSampler
from .data import leave_one_out
from .errors import InputError, TrainingStopped
from .fast.threads import blas_thread_limit
from .model import BERT4Rec
from .optim import AdamWeightDecay
from .settings import TrainConfig, dataset_of


# ----------------------------------------------------------------------------
# Training a run: train -> _train (settings, data, run folder) -> _train_loop (epochs)
# ----------------------------------------------------------------------------


def train(tcfg: TrainConfig, run_dir, resume=False, log=print, overwrite=False):
    """Train (or resume) the run ``tcfg`` describes in the folder ``run_dir``.

    Returns the test metrics of the kept weights ({"sampled": {...}, "full": {...}}, also
    written to metrics.json), or None after Ctrl-C. Stops after ``tcfg.epochs`` epochs in
    total, at the ``tcfg.minutes`` budget, or on Ctrl-C; the last two save a resumable
    checkpoint first (after Ctrl-C nothing is evaluated; a second Ctrl-C aborts).
    resume: continue the run in ``run_dir``; it takes from ``tcfg`` only epochs (None: the
    run's own), minutes, threads, kernels, data_dir and progress, the rest from the run's
    config.json. overwrite: replace a finished or abandoned run in ``run_dir``.
    log: where progress lines go (print). ``tcfg.threads`` limits BLAS threads meanwhile;
    with ``tcfg.kernels == "fast"`` the fast path's process-wide settings are switched on
    first (``minibert4rec.fast.enable``).
    """
    if tcfg.kernels == "fast":
        fast.enable()
    with blas_thread_limit(tcfg.threads):
        return _train(tcfg, run_dir, resume, log, overwrite)


def _train(tcfg: TrainConfig, run_dir, resume=False, log=print, overwrite=False):
    """``train`` inside the BLAS thread limit: the settings (a resumed run's own), the data,
    the cloze sampler, the run folder (created, or opened and its checkpoint read), then
    ``_train_loop``."""
    run_dir = os.fspath(run_dir)
    folder = checkpoint = None
    try:
        if resume:
            folder = runs.RunFolder.open(run_dir)    # the lock; a missing folder is not created
            _, old_cfg, saved_mcfg = runs.read_run_config(run_dir)
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
        runs.check_fits(mcfg, tcfg.batch_size, os.path.join(run_dir, runs.CONFIG) if resume else
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

        conf = {"format_version": runs.FORMAT_VERSION, "model": mcfg.to_dict(), "train": asdict(tcfg),
                "dataset": {"name": ds.name, "n_users": ds.n_users, "n_items": ds.n_items}}
        items = "\n".join(map(str, ds.raw_item_ids)) + "\n"
        if resume:
            checkpoint = _read_checkpoint_of(run_dir, runs.param_shapes(mcfg), steps_per_epoch)
            if runs.read_json(folder.file(runs.CONFIG)) != conf:
                folder.write_json(runs.CONFIG, conf)          # the new length, budget, data dir
            if not os.path.exists(folder.file(runs.ITEMS)):
                folder.write_text(runs.ITEMS, items)
        else:
            folder = runs.RunFolder.create(run_dir, conf, overwrite)
            folder.write_text(runs.ITEMS, items)
        return _train_loop(tcfg, mcfg, ds, split, sampler, steps_per_epoch, valid_neg, folder,
                           checkpoint, log)
    finally:
        if folder is not None:
            folder.close()


def _train_loop(tcfg, mcfg, ds, split, sampler, steps_per_epoch, valid_neg, folder, checkpoint,
                log):
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
                 "data_rng": runs.rng_state(np.random.default_rng([tcfg.seed, 1])),
                 "dropout_rng": runs.rng_state(np.random.default_rng([tcfg.seed, 2]))}
    else:
        opt.load_state_arrays(moments, state["step"])
        if legacy:                 # one checkpoint.npz from the files of an earlier version
            folder.commit(model.params, best_params, opt.state_arrays(), state)
        else:                      # weights.npz and state.json as the checkpoint says
            folder.publish(model.params, best_params, state)
    saved = dict(state) if checkpoint is not None else None     # the checkpoint on disk
    dropout_rng = runs.rng_from_state(state["dropout_rng"])

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
        state["dropout_rng"] = runs.rng_state(dropout_rng)
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
            epoch_rng = runs.rng_from_state(state["data_rng"])        # the epoch-start state
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
            state["data_rng"] = runs.rng_state(epoch_rng)              # next epoch's start state
            t_eval = time.perf_counter()
            valid = validate()
            record = {"epoch": state["epoch"], "step": state["step"],
                      "minutes": round(state["elapsed"] / 60, 3),
                      "loss": (state["loss_sum"] / state["loss_batches"]
                               if state["loss_batches"] else None), "valid": valid}
            state["loss_sum"], state["loss_batches"] = 0.0, 0
            if tcfg.track_test:
                record["test"] = ev.test_metrics(model, ds, split, "sampled", tcfg.test_seed,
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
    best, _, _ = runs.load_run(run_dir, "best")
    metrics = ev.test_metrics(best, ds, split, "both", tcfg.test_seed, tcfg.eval_batch_size,
                              n_negatives=tcfg.n_negatives)
    folder.write_json(runs.METRICS, metrics)
    return metrics


# ----------------------------------------------------------------------------
# What the loop leans on: paths, the checkpoint of a run being resumed,
# validation negatives, quiet overflows, Ctrl-C
# ----------------------------------------------------------------------------


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
    path = source = os.path.join(run_dir, runs.CHECKPOINT)
    if os.path.exists(path):
        c = runs.read_checkpoint(path, shapes)
        state = runs.check_state(c["state"], path, steps_per_epoch)
        params, best, moments = c["params"], c["best"], c["moments"]
        legacy = False
    else:
        old = [os.path.join(run_dir, n) for n in (*runs.LEGACY, runs.STATE)]   # last, optimizer, state
        present = [os.path.exists(p) for p in old]
        if not any(present):
            return None
        if not all(present):
            have = ", ".join(os.path.basename(p) for p, e in zip(old, present) if e)
            raise InputError(f"{run_dir}: holds an incomplete checkpoint of an earlier version "
                             f"({have} only): it cannot be resumed; train again with --overwrite")
        state = runs.check_state(runs.read_json(old[2]), old[2], steps_per_epoch)
        params = runs.read_arrays(old[0], shapes, kinds="f")
        moments = runs.read_arrays(old[1], {f"{p}/{k}": s for p in "mv" for k, s in shapes.items()},
                                   kinds="f")
        best = None
        if state["best_epoch"] is not None:
            best = runs.read_arrays(os.path.join(run_dir, runs.WEIGHTS), shapes, kinds="f")
        legacy = True
        source = f"{run_dir} ({', '.join(os.path.basename(p) for p in old)})"
    for name, arrays in (("weights", params), ("best weights", best), ("moments", moments)):
        bad = runs.non_finite(arrays or {})
        if bad is not None:
            raise InputError(f"{source}: the checkpoint's {name} hold non-finite values ({bad!r}): "
                             f"train again with --overwrite and a lower --lr")
    return params, best, moments, state, legacy


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


__all__ = ["train", "TrainingStopped", "validation_negatives"]
