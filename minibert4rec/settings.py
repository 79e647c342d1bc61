"""What defines a training run: ``TrainConfig``, and the presets of ``train --dataset NAME``.

A run is fully described by one ``TrainConfig``: the data, the model's shape, the cloze task,
the optimizer and the bookkeeping (time budget, threads, progress bars). Fields left ``None``
take the dataset's preset (``PRESETS``; ``DEFAULT_PRESET`` for a file of your own), filled in
by ``resolved()``, which also checks every value (one-line ``InputError`` otherwise).
The resolved settings are saved in the run's ``config.json`` (``train`` block), so a run can
be resumed, evaluated or re-created exactly.

    tcfg = TrainConfig(dataset="beauty", seed=1).resolved()    # the preset, filled in
    tcfg.model_config(vocab_size)                              # the model's Config (model.py)
"""
from __future__ import annotations

import math
from dataclasses import asdict, dataclass

from .data import Dataset, filter_min_interactions, load_dataset, synthetic
from .errors import InputError
from .fast import KERNELS
from .model import Config

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
        """Raise InputError (one line) on any out-of-range value; on resolved settings only
        (``resolved()`` calls it after filling the preset's None fields)."""
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
        """The model's Config (model.py) for a vocabulary of ``vocab_size`` ids."""
        return Config(vocab_size=vocab_size, max_len=self.max_len, hidden=self.hidden,
                      layers=self.layers, heads=self.heads, ffn=self.ffn,
                      hidden_dropout=self.hidden_dropout,
                      attention_dropout=self.attention_dropout, position=self.position,
                      attention=self.attention, gelu=self.gelu)


def dataset_of(tcfg: TrainConfig) -> Dataset:
    """The data set ``tcfg`` names: the synthetic data of ``tcfg.synthetic_users`` users and
    ``tcfg.synthetic_items`` items, or a named data set or file (``data.load_dataset``, found
    in ``tcfg.data_dir``); users with fewer than ``tcfg.min_interactions`` items dropped."""
    if tcfg.dataset == "synthetic":
        return filter_min_interactions(synthetic(tcfg.synthetic_users, tcfg.synthetic_items),
                                       tcfg.min_interactions, "synthetic")
    return load_dataset(tcfg.dataset, tcfg.data_dir, tcfg.min_interactions)


__all__ = ["TrainConfig", "PRESETS", "DEFAULT_PRESET", "dataset_of"]
