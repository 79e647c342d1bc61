"""Interaction data for sequential recommendation: loading, id remapping, splitting.

BERT4Rec sees each user as one *sequence*: the items the user interacted with,
in chronological order. Everything in this module turns files into that form::

    user 7:  [12, 5, 5, 31, 8]      # item ids, oldest first

Vocabulary (as in the authors' code)
------------------------------------
Item ids are remapped to small integers so they can index an embedding table:

* ``0`` is padding (short sequences are right-padded with it: items first, then zeros),
* ``1 .. n_items`` are real items, most frequent first (ties: first appearance),
* ``n_items + 1`` is the ``[MASK]`` token of the Cloze task.

So the embedding table has ``vocab_size = n_items + 2`` rows. The original
("raw") ids are kept as strings so predictions can be decoded back.

Leave-one-out split (paper section 4.1)
---------------------------------------
For every user the LAST item is the test target and the second-to-last item the
validation target. Like the authors, the training sequence still ends with the
validation item; only the test item is never trained on.

File formats
------------
* user-item (the authors' ``beauty.txt``, SASRec): ``user item`` per line, already
  chronological per user;
* MovieLens: ``ratings.dat`` (``user::item::rating::timestamp``) or ``u.data``
  (tab separated, same columns), sorted here by timestamp;
* a delimited table with a header row (RecBole ``.inter`` files, csv), sorted by
  its timestamp column when there is one.

Every bad line is reported as ``path:line: what is wrong`` (an ``InputError``).
"""
from __future__ import annotations

import contextlib
import gc
import os
import pathlib
from dataclasses import dataclass, field

import numpy as np

from .errors import InputError, at

NAMED_DATASETS = ("synthetic", "beauty", "ml-1m", "ml-100k")


# --------------------------------------------------------------------------- #
# The data containers
# --------------------------------------------------------------------------- #
@dataclass
class Dataset:
    """Chronological item sequences, one per user, with remapped item ids.

    Attributes:
        name: dataset name (for messages and reports).
        sequences: list of n_users int64 arrays, item ids in 1..n_items, oldest first.
        n_items: number of distinct items; ids 1..n_items (0 = pad, n_items+1 = [MASK]).
        raw_item_ids: (n_items,) str array, original id of internal item i at index i-1.
        raw_user_ids: (n_users,) str array, original id of user u at index u.
    """

    name: str
    sequences: list[np.ndarray]
    n_items: int
    raw_item_ids: np.ndarray
    raw_user_ids: np.ndarray
    _raw_to_id: dict = field(default=None, init=False, repr=False, compare=False)

    @property
    def mask_id(self) -> int:
        """Id of the [MASK] token: n_items + 1."""
        return self.n_items + 1

    @property
    def vocab_size(self) -> int:
        """Rows of the item embedding table: pad + items + mask = n_items + 2."""
        return self.n_items + 2

    @property
    def n_users(self) -> int:
        """The number of users, one sequence each."""
        return len(self.sequences)

    @property
    def n_interactions(self) -> int:
        return int(sum(len(s) for s in self.sequences))

    def popularity(self) -> np.ndarray:
        """(vocab_size,) float64: how often each id occurs in ALL sequences.

        Pad (0) and mask (n_items+1) get 0. Used by the popularity baseline and
        by the popularity-sampled negatives of the paper's evaluation.
        """
        counts = np.bincount(np.concatenate(self.sequences), minlength=self.vocab_size)
        counts = counts.astype(np.float64)
        counts[0] = 0.0
        counts[self.mask_id] = 0.0
        return counts

    def encode_items(self, raw_ids) -> np.ndarray:
        """Raw ids (str or int) -> (len,) int64 internal ids; InputError on unknown ids."""
        if self._raw_to_id is None:
            self._raw_to_id = {raw: i + 1 for i, raw in enumerate(self.raw_item_ids.tolist())}
        keys = [str(r) for r in raw_ids]
        unknown = [k for k in keys if k not in self._raw_to_id]
        if unknown:
            shown = ", ".join(unknown[:5]) + (", ..." if len(unknown) > 5 else "")
            raise InputError(f"unknown item id(s) for dataset {self.name}: {shown}")
        return np.array([self._raw_to_id[k] for k in keys], dtype=np.int64)

    def decode_items(self, ids) -> list[str]:
        """Internal ids -> raw id strings; 0 -> "[PAD]", mask_id -> "[MASK]"."""
        names = []
        for i in np.asarray(ids, dtype=np.int64).ravel().tolist():
            if i == 0:
                names.append("[PAD]")
            elif i == self.mask_id:
                names.append("[MASK]")
            elif 1 <= i <= self.n_items:
                names.append(str(self.raw_item_ids[i - 1]))
            else:
                raise InputError(f"item id {i} is outside 0..{self.mask_id} for dataset {self.name}")
        return names


@dataclass
class Split:
    """Leave-one-out split; every list/array has one entry per user.

    Attributes:
        train: sequence minus its last (test) item; ends WITH the validation item.
        valid_input: sequence minus its last two items (history for validation).
        valid_target: (n_users,) int64, second-to-last item.
        test_input: sequence minus its last item (= train).
        test_target: (n_users,) int64, last item.
    """

    train: list[np.ndarray]
    valid_input: list[np.ndarray]
    valid_target: np.ndarray
    test_input: list[np.ndarray]
    test_target: np.ndarray


def leave_one_out(ds: Dataset) -> Split:
    """Split each user's sequence: last item = test, second-to-last = validation."""
    for u, seq in enumerate(ds.sequences):
        if len(seq) < 3:
            raise InputError(
                f"{ds.name}: user {ds.raw_user_ids[u]} has {len(seq)} interactions; "
                "leave-one-out needs at least 3 (load with min_interactions >= 3)")
    return Split(
        train=[s[:-1] for s in ds.sequences],
        valid_input=[s[:-2] for s in ds.sequences],
        valid_target=np.array([s[-2] for s in ds.sequences], dtype=np.int64),
        test_input=[s[:-1] for s in ds.sequences],
        test_target=np.array([s[-1] for s in ds.sequences], dtype=np.int64),
    )


def check_same_data(model, ds: Dataset, run_dir=None) -> None:
    """Refuse to use a model on a data set whose items are not the ones it was trained on
    (its vocabulary, ``model.cfg.vocab_size``, must be ``ds.vocab_size``)."""
    if model.cfg.vocab_size != ds.vocab_size:
        where = f"{run_dir}: " if run_dir is not None else ""
        raise InputError(f"{where}the model knows {model.cfg.vocab_size - 2} items, the data set "
                         f"{ds.name} now has {ds.n_items}: the data file changed since training "
                         f"(the model's item ids would not match)")


# --------------------------------------------------------------------------- #
# From a list of interactions to a Dataset (id remapping)
# --------------------------------------------------------------------------- #
def _number_by_first_appearance(values) -> tuple[np.ndarray, list]:
    """Number distinct values 0, 1, 2, ... in order of first appearance.

    Args:
        values: sequence of n hashable raw ids (str or int).
    Returns:
        codes: (n,) int64, the number of each value;
        distinct: the distinct values, distinct[code] is the value of ``code``.
    """
    numbers = {}
    codes = [numbers.setdefault(v, len(numbers)) for v in values]
    return np.array(codes, dtype=np.int64), list(numbers)


def from_interactions(name: str, users, items, timestamps=None) -> Dataset:
    """Build a Dataset from parallel per-interaction lists, in file order.

    Args:
        users, items: n raw ids each (str or int; a list, tuple or 1-d array).
        timestamps: optional (n,) float64; each user's items are sorted by it
            (stable, so ties keep file order). Without it file order is kept.

    Users keep the order of their first appearance; items are numbered
    1..n_items by descending frequency, ties by first appearance in the
    chronological sequences (the authors' vocabulary).
    """
    if isinstance(users, np.ndarray):
        users, items = users.tolist(), np.asarray(items).tolist()
    user_codes, raw_users = _number_by_first_appearance(users)
    item_codes, raw_items = _number_by_first_appearance(items)

    order = np.arange(len(user_codes))
    if timestamps is not None:
        order = np.argsort(np.asarray(timestamps, dtype=np.float64), kind="stable")
    order = order[np.argsort(user_codes[order], kind="stable")]   # group by user, keep time order
    user_codes, item_codes = user_codes[order], item_codes[order]

    counts = np.bincount(item_codes)                              # (I,) interactions per item
    # (I,) the first row that uses each item: the minimum over its rows
    first_seen = np.full(len(counts), len(item_codes))
    np.minimum.at(first_seen, item_codes, np.arange(len(item_codes)))
    # np.lexsort sorts by its LAST key first: most frequent first, ties by first appearance
    by_frequency = np.lexsort((first_seen, -counts))              # (I,) old codes, new order
    new_id = np.empty(len(counts), dtype=np.int64)                # (I,) old code -> new id
    new_id[by_frequency] = np.arange(1, len(counts) + 1)          # the inverse permutation, + 1

    starts = np.flatnonzero(np.diff(user_codes)) + 1              # where a new user begins
    return Dataset(
        name=name,
        sequences=np.split(new_id[item_codes], starts),
        n_items=len(counts),
        raw_item_ids=np.array([str(raw_items[c]) for c in by_frequency]),
        raw_user_ids=np.array([str(u) for u in raw_users]),
    )


def filter_min_interactions(ds: Dataset, min_interactions: int, source=None) -> Dataset:
    """Drop users with fewer than ``min_interactions`` items, then remap item ids.

    ``source`` (the file name) is used in the error raised when no user is left.
    """
    keep = [len(s) >= min_interactions for s in ds.sequences]
    kept = [s for s, k in zip(ds.sequences, keep) if k]
    if not kept:
        raise InputError(f"{source or ds.name}: no user has at least {min_interactions} interactions "
                         f"(min_interactions={min_interactions})")
    if all(keep):
        return ds
    lengths = [len(s) for s in kept]
    users = np.repeat(ds.raw_user_ids[np.array(keep)], lengths)
    items = ds.raw_item_ids[np.concatenate(kept) - 1]   # back to raw ids, then renumber
    return from_interactions(ds.name, users, items)


# --------------------------------------------------------------------------- #
# Reading text files with precise error messages
# --------------------------------------------------------------------------- #
_SEP_NAMES = {None: "whitespace", "\t": "tabs", ",": "commas", ";": "';'", "::": "'::'"}


def _existing_file(path) -> pathlib.Path:
    """``path`` as a Path when it is a file; FileNotFoundError / InputError otherwise."""
    path = pathlib.Path(path)
    if path.is_dir():
        raise at(path, None, "is a folder, not a data file")
    if not path.is_file():
        raise FileNotFoundError(f"{path}: data file not found")
    return path


def _read_lines(path) -> list[str]:
    """All lines of a UTF-8 text file; FileNotFoundError / InputError otherwise."""
    path = _existing_file(path)
    try:
        text = path.read_text(encoding="utf-8")
    except UnicodeDecodeError as e:
        raise at(path, None, f"not a UTF-8 text file ({e.reason} at byte {e.start})") from None
    except OSError as e:                      # no read permission, a special file, ...
        raise at(path, None, f"cannot read the data file ({e.strerror or e})") from None
    return text.splitlines()


def _split_rows(path, lines, sep, n_fields, first_line=1):
    """Split lines into fields; every non-blank line must have exactly n_fields.

    Args:
        lines: list of str; lines[0] is line number ``first_line`` of the file.
        sep: field separator, None for runs of whitespace.
    Returns:
        columns: list of n_fields tuples of str (one entry per non-blank line),
        line_numbers: (n_rows,) int64 1-based line number of each row.
    """
    with _gc_paused():
        rows = [line.split(sep) for line in lines]
    lengths = np.fromiter(map(len, rows), dtype=np.int64, count=len(rows))
    odd = np.flatnonzero(lengths != n_fields)
    blank = [i for i in odd.tolist() if not lines[i].strip()]
    for i in odd.tolist():
        if lines[i].strip():
            raise at(path, first_line + i, _field_count_message(lines[i], sep, n_fields, len(rows[i])))
    keep = np.ones(len(rows), dtype=bool)
    keep[blank] = False
    if blank:
        rows = [r for r, k in zip(rows, keep) if k]
    line_numbers = np.flatnonzero(keep) + first_line
    if not rows:
        raise at(path, None, "no interactions (the file has no data lines)")
    with _gc_paused():
        columns = list(zip(*rows))
    return columns, line_numbers


@contextlib.contextmanager
def _gc_paused():
    """Pause Python's cycle collector while creating ~10^6 small lists.

    The lists contain only strings (no cycles), but each allocation burst
    triggers a collection; pausing makes parsing about three times faster.
    """
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if was_enabled:
            gc.enable()


def _field_count_message(line, sep, n_fields, found) -> str:
    message = f"expected {n_fields} fields separated by {_SEP_NAMES.get(sep, repr(sep))}, found {found}"
    for other in ("::", "\t", ",", ";"):
        if other != sep and other in line:
            return message + f" (the line seems to use {_SEP_NAMES[other]})"
    return message


def _parse_numbers(path, column, line_numbers, dtype, what) -> np.ndarray:
    """Convert a column of strings to numbers; on failure report the first bad line.

    Integers must fit in int64; floats must be finite (a ``nan`` timestamp would
    sort last and silently make its item the user's test item).
    """
    try:
        values = np.array(column, dtype=dtype)
    except (ValueError, OverflowError):
        convert = int if dtype == np.int64 else float
        for value, line in zip(column, line_numbers.tolist()):
            try:
                number = convert(value)
            except (ValueError, OverflowError):
                raise at(path, line, f"{what} {value.strip()!r} is not a valid "
                                     f"{'integer' if convert is int else 'number'}") from None
            if convert is int and not -2**63 <= number < 2**63:
                raise at(path, line, f"{what} {value.strip()} is too large (ids must lie "
                                     f"below 2^63)") from None
        raise  # not reached: some value failed above
    if dtype != np.int64:
        bad = np.flatnonzero(~np.isfinite(values))
        if bad.size:
            raise at(path, int(line_numbers[bad[0]]), f"{what} {column[bad[0]].strip()!r} is not "
                                                      f"a finite number")
    return values


def _check_not_empty(path, column, line_numbers, what) -> None:
    """An empty field (``1::::5::10``, ``1,,10``) is an error, not an id."""
    for value, line in zip(column, line_numbers.tolist()):
        if not value.strip():
            raise at(path, line, f"empty {what}")


def _check_non_negative(path, values, line_numbers, what) -> None:
    bad = np.flatnonzero(values < 0)
    if bad.size:
        raise at(path, int(line_numbers[bad[0]]), f"{what} {values[bad[0]]} is negative")


# --------------------------------------------------------------------------- #
# Loaders, one per file format
# --------------------------------------------------------------------------- #
def load_user_item_file(path) -> Dataset:
    """Authors'/SASRec format: ``user item`` per line (whitespace separated).

    Ids must be non-negative integers; lines of one user are already in
    chronological order (file order is kept).
    """
    path = pathlib.Path(path)
    (users, items), lines = _split_rows(path, _read_lines(path), None, 2)
    user_ids = _parse_numbers(path, users, lines, np.int64, "user id")
    item_ids = _parse_numbers(path, items, lines, np.int64, "item id")
    _check_non_negative(path, user_ids, lines, "user id")
    _check_non_negative(path, item_ids, lines, "item id")
    return from_interactions(path.name, user_ids, item_ids)


def load_movielens(path) -> Dataset:
    """MovieLens ratings: ``ratings.dat`` (``::``) or ``u.data`` (tabs).

    Columns: user, item, rating, timestamp. Each user's items are sorted by
    timestamp (stable: equal timestamps keep file order). Ratings are ignored:
    every rating counts as an interaction, as in the paper.
    """
    path = pathlib.Path(path)
    lines = _read_lines(path)
    sep = _movielens_separator(path, lines)
    (users, items, _, times), numbers = _split_rows(path, lines, sep, 4)
    _check_not_empty(path, users, numbers, "user id")
    _check_not_empty(path, items, numbers, "item id")
    timestamps = _parse_numbers(path, times, numbers, np.float64, "timestamp")
    return from_interactions(path.name, users, items, timestamps)


def _movielens_separator(path, lines) -> str:
    """'::' for ratings.dat-style files, tab for u.data-style files."""
    if path.name == "u.data":
        return "\t"
    if path.suffix == ".dat":
        return "::"
    first = next((line for line in lines if line.strip()), "")
    return "::" if "::" in first else "\t"


_USER_COLUMNS = ("user_id", "user", "userid")
_ITEM_COLUMNS = ("item_id", "item", "itemid", "movie_id", "movieid")
_TIME_COLUMNS = ("timestamp", "time", "ts")


def _column_name(header_field: str) -> str:
    """RecBole writes 'user_id:token': drop the ':type' suffix, lower-case."""
    return header_field.strip().split(":")[0].strip().lower()


def _sniff_delimiter(path, header: str) -> str:
    counts = {sep: header.count(sep) for sep in ("\t", ",", ";")}
    sep = max(counts, key=counts.get)
    if counts[sep] == 0:
        raise at(path, 1, f"cannot detect the delimiter of header {header.strip()!r}: "
                          "expected columns separated by tabs, commas or ';'")
    return sep


def load_table(path, delimiter=None) -> Dataset:
    """Delimited table with a header row naming user / item / timestamp columns.

    Accepted names: user, user_id; item, item_id; timestamp, time (RecBole
    ``:token``/``:float`` suffixes are ignored). The delimiter (tab, comma or
    ';') is sniffed from the header when not given. Without a timestamp column
    the file order is kept.
    """
    path = pathlib.Path(path)
    lines = _read_lines(path)
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise at(path, None, "no interactions (the file is empty)")
    header = lines[first]
    sep = delimiter if delimiter is not None else _sniff_delimiter(path, header)
    names = [_column_name(f) for f in header.split(sep)]
    user_col = _find_column(names, _USER_COLUMNS)
    item_col = _find_column(names, _ITEM_COLUMNS)
    time_col = _find_column(names, _TIME_COLUMNS)
    if user_col is None or item_col is None:
        raise at(path, first + 1, f"header columns {names} (separated by {_SEP_NAMES.get(sep, repr(sep))}) "
                                  f"lack a user column (one of {', '.join(_USER_COLUMNS)}) "
                                  f"and/or an item column (one of {', '.join(_ITEM_COLUMNS)})")
    columns, numbers = _split_rows(path, lines[first + 1:], sep, len(names), first_line=first + 2)
    users = [u.strip() for u in columns[user_col]]
    items = [i.strip() for i in columns[item_col]]
    _check_not_empty(path, users, numbers, "user id")
    _check_not_empty(path, items, numbers, "item id")
    timestamps = None
    if time_col is not None:
        timestamps = _parse_numbers(path, columns[time_col], numbers, np.float64, "timestamp")
    return from_interactions(path.name, users, items, timestamps)


def _find_column(names, accepted):
    for i, name in enumerate(names):
        if name in accepted:
            return i
    return None


def load_file(path) -> Dataset:
    """Load a file, choosing the loader from its name and first line.

    '::' in the first line or the name u.data -> MovieLens; a header row naming a
    user/item column (or a .inter/.csv file) -> table; otherwise user-item.
    """
    path = _existing_file(path)
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            first = next((line for line in f if line.strip()), "")
    except OSError as e:                      # no read permission, ...
        raise at(path, None, f"cannot read the data file ({e.strerror or e})") from None
    if path.name == "u.data" or path.name == "ratings.dat" or "::" in first:
        return load_movielens(path)
    names = {_column_name(f) for f in first.replace(",", "\t").replace(";", "\t").split()}
    known = set(_USER_COLUMNS + _ITEM_COLUMNS + _TIME_COLUMNS)
    if path.suffix in (".inter", ".csv") or names & known:
        return load_table(path)
    return load_user_item_file(path)


# --------------------------------------------------------------------------- #
# Named datasets
# --------------------------------------------------------------------------- #
def resolve_data_dir(data_dir=None) -> pathlib.Path:
    """Where datasets live: ``data_dir``, else $MINIBERT4REC_DATA, else the user cache.

    The cache is ``$XDG_CACHE_HOME/minibert4rec`` or ``~/.cache/minibert4rec``.
    The directory is not created here.
    """
    if data_dir:
        return pathlib.Path(data_dir).expanduser()
    if os.environ.get("MINIBERT4REC_DATA"):
        return pathlib.Path(os.environ["MINIBERT4REC_DATA"]).expanduser()
    cache = os.environ.get("XDG_CACHE_HOME") or pathlib.Path.home() / ".cache"
    return pathlib.Path(cache).expanduser() / "minibert4rec"


def _named_file(name: str, data_dir) -> pathlib.Path:
    """The file of a downloaded dataset, or FileNotFoundError telling how to get it."""
    root = resolve_data_dir(data_dir)
    candidates = {
        "beauty": [root / "beauty.txt"],
        "ml-100k": [root / "ml-100k.inter", root / "ml-100k" / "u.data"],
        "ml-1m": [root / "ml-1m" / "ratings.dat", root / "ml-1m.inter"],
    }[name]
    for path in candidates:
        if path.is_file():
            return path
    raise FileNotFoundError(f"dataset {name} not found (looked for {', '.join(map(str, candidates))}); "
                            f"run: python -m minibert4rec download {name}")


def load_dataset(name_or_path: str, data_dir=None, min_interactions: int = 3) -> Dataset:
    """Load a named dataset or a file, then drop users with < min_interactions items.

    Args:
        name_or_path: one of "synthetic", "beauty", "ml-1m", "ml-100k", or a file path.
        data_dir: where named datasets were downloaded (see resolve_data_dir).
        min_interactions: users with fewer interactions are dropped (paper: 3);
            item ids are remapped afterwards.
    """
    name = str(name_or_path)
    if name == "synthetic":
        ds, source = synthetic(), "synthetic"
    elif name in NAMED_DATASETS:
        source = _named_file(name, data_dir)
        ds = load_file(source)
        ds.name = name
    elif pathlib.Path(name).expanduser().is_file():
        source = pathlib.Path(name).expanduser()
        ds = load_file(source)
        ds.name = str(name)
    elif "/" in name or "\\" in name or pathlib.Path(name).suffix:
        # it looks like a path (a folder or an extension), so say the file is missing
        raise FileNotFoundError(2, f"data file not found (valid dataset names: "
                                   f"{', '.join(NAMED_DATASETS)})", name)
    else:
        raise InputError(f"unknown dataset {name!r}: not an existing file and not one of "
                         f"{', '.join(NAMED_DATASETS)}")
    return filter_min_interactions(ds, min_interactions, source)


# --------------------------------------------------------------------------- #
# Synthetic data with planted sequential structure
# --------------------------------------------------------------------------- #
def synthetic(n_users: int = 2000, n_items: int = 200, seed: int = 0, n_chains: int = 8,
              p_follow: float = 0.75, zipf_a: float = 1.0, min_len: int = 5,
              max_len: int = 40) -> Dataset:
    """Users walking along hidden item chains: a small data set a model can learn.

    How it is made (deterministic given ``seed``):

    * the items are shuffled and cut into ``n_chains`` cycles ("topics"); every
      item has a fixed *successor*, the next item of its cycle;
    * each user starts at a random item and takes ``min_len..max_len`` steps
      (uniform length): with probability ``p_follow`` the next item is the
      successor of the current one, otherwise a "jump" to an item drawn from a
      Zipf(``zipf_a``) popularity law (a few items are very popular).

    What a model should learn:

    * the last item almost determines the next one: a model that finds the
      successor gets Hit@1 close to ``p_follow`` (0.75), far above a popularity
      baseline, which only profits from the jumps;
    * the structure also runs backwards (an item's predecessor is fixed too),
      so a bidirectional model can fill in a masked item from either neighbour.

    Lengths vary from 5 to 40, so some sequences exceed a max_len of 20.
    Returns a Dataset named "synthetic" (ids remapped like any other dataset).
    """
    rng = np.random.default_rng(seed)
    successor = _chain_successors(rng, n_items, n_chains)
    jump_p = 1.0 / np.arange(1, n_items + 1) ** zipf_a
    jump_p = jump_p[rng.permutation(n_items)]          # which items are popular: random
    jump_p /= jump_p.sum()

    lengths = rng.integers(min_len, max_len + 1, size=n_users)
    total = int(lengths.sum())
    follows = rng.random(total) < p_follow
    jumps = rng.choice(n_items, size=total, p=jump_p)
    starts = rng.integers(0, n_items, size=n_users)

    items = np.empty(total, dtype=np.int64)
    pos = 0
    for u in range(n_users):
        current = starts[u]
        for t in range(lengths[u]):
            if t > 0:
                current = successor[current] if follows[pos] else jumps[pos]
            items[pos] = current
            pos += 1
    users = np.repeat(np.arange(n_users), lengths)
    return from_interactions("synthetic", users, items + 1)


def _chain_successors(rng, n_items: int, n_chains: int) -> np.ndarray:
    """(n_items,) int64: successor[i] = next item after i in its (random) cycle."""
    order = rng.permutation(n_items)
    successor = np.empty(n_items, dtype=np.int64)
    for chain in np.array_split(order, max(1, min(n_chains, n_items))):
        successor[chain] = np.roll(chain, -1)
    return successor


# --------------------------------------------------------------------------- #
# Item titles: the companion file that names the items (for labelled plots)
# --------------------------------------------------------------------------- #
_TITLE_COLUMNS = ("movie_title", "title", "item_name", "name")


def load_item_titles(path) -> dict[str, str]:
    """Raw item id -> title, read from an item file. Three formats:

    * RecBole ``.item`` (e.g. ``ml-100k.item``): a header row naming the
      columns, tab-separated, such as
      ``item_id:token  movie_title:token_seq  release_year:token  class:token_seq``;
      the id column is ``item_id`` (or ``item``, ``movie_id``), the title
      column ``movie_title`` (or ``title``, ``item_name``, ``name``);
    * MovieLens-100K ``u.item``: ``id|title|release date|...``, no header;
    * MovieLens-1M ``movies.dat``: ``id::title::genres``, no header.

    The MovieLens originals are Latin-1; a file that is not UTF-8 is read as
    Latin-1. Keys are raw id strings, as in ``Dataset.raw_item_ids``.
    Raises FileNotFoundError, or InputError (``path:line: ...``) on a bad line.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise FileNotFoundError(2, "item file not found", str(path))
    raw = path.read_bytes()
    try:
        lines = raw.decode("utf-8").splitlines()
    except UnicodeDecodeError:
        lines = raw.decode("latin-1").splitlines()
    first = next((i for i, line in enumerate(lines) if line.strip()), None)
    if first is None:
        raise at(path, None, "no items (the file is empty)")
    if "::" in lines[first]:
        sep, id_col, title_col, start = "::", 0, 1, first
    elif "|" in lines[first] and "\t" not in lines[first]:
        sep, id_col, title_col, start = "|", 0, 1, first
    else:
        sep = "\t"
        names = [_column_name(f) for f in lines[first].split(sep)]
        id_col = _find_column(names, _ITEM_COLUMNS)
        title_col = _find_column(names, _TITLE_COLUMNS)
        if id_col is None or title_col is None:
            raise at(path, first + 1, f"header columns {names} (separated by tabs) lack an item "
                                      f"column (one of {', '.join(_ITEM_COLUMNS)}) and/or a title "
                                      f"column (one of {', '.join(_TITLE_COLUMNS)})")
        start = first + 1
    need = max(id_col, title_col) + 1
    titles = {}
    for number, line in enumerate(lines[start:], start + 1):
        if not line.strip():
            continue
        fields = line.split(sep)
        if len(fields) < need:
            raise at(path, number, f"expected at least {need} fields separated by "
                                   f"{_SEP_NAMES.get(sep, repr(sep))}, found {len(fields)}")
        titles[fields[id_col].strip()] = fields[title_col].strip()
    return titles


def item_titles_file(name_or_path, data_dir=None) -> pathlib.Path | None:
    """The item file of a named dataset or data file, or None when there is none.

    ml-100k: ``ml-100k.item`` in the data directory (RecBole), else
    ``ml-100k/u.item`` (the GroupLens zip); ml-1m: ``ml-1m.item``, else
    ``ml-1m/movies.dat``; a data file ``X.inter`` (or any ``X.ext``): ``X.item``
    beside it. Beauty and the synthetic data have no titles.
    """
    name = str(name_or_path)
    if name in NAMED_DATASETS:
        root = resolve_data_dir(data_dir)
        candidates = {"ml-100k": [root / "ml-100k.item", root / "ml-100k" / "u.item"],
                      "ml-1m": [root / "ml-1m.item", root / "ml-1m" / "movies.dat"]}.get(name, [])
    else:
        candidates = [pathlib.Path(name).expanduser().with_suffix(".item")]
    return next((p for p in candidates if p.is_file()), None)


def item_titles(name_or_path, data_dir=None) -> dict[str, str]:
    """Raw item id -> title for a dataset (see ``item_titles_file``); {} without an item file."""
    path = item_titles_file(name_or_path, data_dir)
    return load_item_titles(path) if path is not None else {}


def item_labels(ds: Dataset, titles: dict, width: int = 28) -> list[str]:
    """One label per vocabulary id, for plots: index i labels internal id i.

    Labels are "[PAD]", the item's title (cut to ``width`` characters with a
    trailing "…") or, for an item without a title, its raw id, then "[MASK]".
    """
    def cut(text):
        return text if len(text) <= width else text[:width - 1].rstrip() + "…"
    names = [cut(titles.get(raw, raw)) for raw in ds.raw_item_ids.tolist()]
    return ["[PAD]"] + names + ["[MASK]"]
