"""Run folders: one writer at a time, one atomic checkpoint, every file checked when read back.

A run folder (``train --out RUN``) holds

    config.json      the run's settings (model, training, data set); written first: a
                     folder is a run as soon as it has one
    items.txt        line i = the original id of item i (for ``recommend``)
    checkpoint.npz   THE checkpoint, one file replaced atomically at every save: the
                     weights (``params/NAME``), the best weights so far (``best/NAME``),
                     AdamWeightDecay's moments (``m/NAME``, ``v/NAME``) and the training
                     state (``state``: JSON text as bytes; epoch, batch, generators, history)
    weights.npz      a copy of the best weights (for other programs; written after each
                     checkpoint that changed them)
    state.json       a copy of the training state (the per-epoch history, for plots)
    metrics.json     test metrics of the best weights, at the end

Crash safety comes from the order of writes. Every file is written to a
temporary name and renamed (``files.atomic_write``); the checkpoint is ONE file,
so after a kill at any moment the folder holds either the previous complete
checkpoint or the new one, and ``weights.npz`` / ``state.json`` are refreshed
from it when the run is resumed. Run folders written before ``checkpoint.npz``
existed (``last.npz``, ``optimizer.npz``, ``state.json``) are still read.

One writer: a training (and ``evaluate --save``) holds an exclusive lock on the
folder (``flock`` on the folder itself, dropped by the operating system when the
process ends, however it ends); a second writer stops with a one-line error.

Everything read back is checked before it is used, and before anything is
allocated from it: JSON files must be UTF-8 and valid JSON, with the right types
in every field; a ``.npz`` file's arrays are checked from their headers (names,
number types, shapes, sizes against the file's own length) before their data is
read, and the data against its zip checksum. Any problem is an ``InputError``
naming the file (and field), which the command line prints as one line.

Reading a run back as a model (the end of this file) is what ``evaluate``,
``recommend``, ``attention`` and ``figures`` do:

    model, tcfg, conf = load_run("runs/beauty")                  # the best weights
    model, tcfg, conf, ds = load_run_and_data("runs/beauty")     # and its data set
"""
from __future__ import annotations

import dataclasses
import errno
import json
import math
import os
import zipfile

import numpy as np

from . import files
from .data import check_same_data
from .errors import InputError
from .model import BERT4Rec, Config
from .settings import TrainConfig, dataset_of

FORMAT_VERSION = 1                               # config.json's "format_version"
CONFIG, ITEMS, CHECKPOINT = "config.json", "items.txt", "checkpoint.npz"
WEIGHTS, STATE, METRICS = "weights.npz", "state.json", "metrics.json"
LEGACY = ("last.npz", "optimizer.npz")           # the checkpoint of earlier versions
RUN_FILES = (CONFIG, ITEMS, CHECKPOINT, WEIGHTS, STATE, METRICS) + LEGACY


# ----------------------------------------------------------------------------
# Reading JSON, checked
# ----------------------------------------------------------------------------


def _open_for_reading(path, what):
    """Open ``path`` in binary mode; one-line errors for folders and unreadable files."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise InputError(f"{path}: is a folder, not a {what}")
    try:
        return open(path, "rb")
    except FileNotFoundError:
        raise FileNotFoundError(2, f"{what} not found", path) from None
    except OSError as e:
        raise InputError(f"{path}: cannot read the {what}: {e.strerror or e}") from None


def read_json(path, what="JSON file"):
    """The value in a JSON file; InputError (one line, with the line number) if it is not one.

    NaN and Infinity, which Python's json accepts, are refused: no file of a
    run ever holds them.
    """
    path = os.fspath(path)
    with _open_for_reading(path, what) as f:
        try:
            data = f.read()
        except OSError as e:
            raise InputError(f"{path}: cannot read the {what}: {e.strerror or e}") from None
    try:
        text = data.decode("utf-8")
    except UnicodeDecodeError as e:
        raise InputError(f"{path}: not a UTF-8 text file ({e.reason} at byte {e.start})") from None

    def refuse(constant):
        raise InputError(f"{path}: {constant} is not a valid number here")
    try:
        return json.loads(text, parse_constant=refuse)
    except json.JSONDecodeError as e:
        raise InputError(f"{path}:{e.lineno}: not valid JSON ({e.msg})") from None
    except RecursionError:
        raise InputError(f"{path}: not valid JSON (nested too deeply)") from None


def write_json(path, obj) -> None:
    """Write ``obj`` as JSON through a temporary file and one rename."""
    text = json.dumps(obj, indent=1, allow_nan=False)
    files.atomic_write(path, lambda f: f.write(text.encode("utf-8")))


_TYPES = {"int": int, "float": float, "str": str, "bool": bool, "None": type(None)}


def _type_ok(value, allowed) -> bool:
    for t in allowed:
        if t is type(None) and value is None:
            return True
        if t is bool and isinstance(value, bool):
            return True
        if t is int and isinstance(value, int) and not isinstance(value, bool):
            return True
        if t is float and isinstance(value, (int, float)) and not isinstance(value, bool):
            return math.isfinite(value)
        if t is str and isinstance(value, str):
            return True
    return False


def fields_from_json(cls, obj, where: str, defaults: dict | None = None) -> dict:
    """Check a JSON object against a dataclass's fields; return the keyword arguments.

    Every key must be a field, every value of the field's annotated type
    (``int``, ``float``, ``str``, ``bool``, ``X | None``; bools are not numbers,
    numbers are finite). ``where`` names the object in messages
    (``RUN/config.json: field train.lr``). Ranges are the dataclass's own
    ``validate``'s business.
    """
    if not isinstance(obj, dict):
        raise InputError(f"{where}: expected an object {{...}}, found {type(obj).__name__}")
    known = {f.name: f for f in dataclasses.fields(cls) if f.init}
    out = dict(defaults or {})
    for key, value in obj.items():
        if key not in known:
            raise InputError(f"{where}.{key}: unknown field (this version of minibert4rec "
                             f"does not know it)")
        annotation = known[key].type if isinstance(known[key].type, str) else known[key].type.__name__
        allowed = [_TYPES[t.strip()] for t in annotation.split("|") if t.strip() in _TYPES]
        if allowed and not _type_ok(value, allowed):
            names = " or ".join("null" if t is type(None) else
                                ("number" if t is float else t.__name__) for t in allowed)
            raise InputError(f"{where}.{key}: expected {names}, found {json.dumps(value)[:40]}")
        out[key] = value
    return out


# ----------------------------------------------------------------------------
# Arrays: .npz files checked from their headers before any data is read
# ----------------------------------------------------------------------------


def memory_bytes() -> int:
    """This machine's physical memory in bytes (2^40 where it cannot be asked)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return 1 << 40


def _npz_headers(path, zf, size):
    """name -> (ZipInfo, shape, dtype) of every array in an open .npz, from headers only."""
    headers = {}
    for info in zf.infolist():
        if not info.filename.endswith(".npy"):
            raise InputError(f"{path}: not a checkpoint file (it holds {info.filename!r}, "
                             f"not an array)")
        name = info.filename[:-4]
        if info.compress_type == zipfile.ZIP_STORED:
            if info.header_offset + info.compress_size > size:
                raise InputError(f"{path}: truncated or corrupt checkpoint file (array {name!r} "
                                 f"runs past the end of the file)")
        elif info.compress_type != zipfile.ZIP_DEFLATED:
            raise InputError(f"{path}: not a valid checkpoint file (array {name!r} is stored "
                             f"with an unknown compression)")
        with zf.open(info) as member:
            version = np.lib.format.read_magic(member)
            if version == (1, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_1_0(member)
            elif version == (2, 0):
                shape, fortran, dtype = np.lib.format.read_array_header_2_0(member)
            else:
                raise ValueError(f"array format version {version}")
            start = member.tell()
        if dtype.hasobject:
            raise InputError(f"{path}: refusing to load: the file contains Python objects "
                             f"(pickle), which could run code; checkpoints hold plain arrays only")
        nbytes = math.prod(shape) * dtype.itemsize
        if info.file_size != start + nbytes:
            raise InputError(f"{path}: truncated or corrupt checkpoint file (array {name!r} of "
                             f"shape {shape} needs {nbytes} bytes, the file holds "
                             f"{info.file_size - start})")
        headers[name] = (info, tuple(shape), dtype)
    return headers


# A hostile or damaged zip can make zipfile, zlib or numpy's header parser fail in many
# ways (BadZipFile, zlib.error, struct.error, ValueError, EOFError, ...): all mean "corrupt".
_CORRUPT = Exception


class Npz:
    """An open .npz file whose array headers are read and checked; data read on demand.

    ``Npz(path)`` checks that the file is a zip of plain arrays (no pickle), that
    every array's header is sound and its bytes are all there, and that the
    whole fits in memory; ``shapes`` then maps names to shapes. ``check`` holds
    the names, shapes and number types to what a caller expects; ``read``
    loads arrays (verifying their checksums). Every problem is an InputError
    naming the file; use it as a context manager.
    """

    def __init__(self, path, what="checkpoint file"):
        self.path = os.fspath(path)
        self._file = _open_for_reading(self.path, what)
        self._zip = None
        try:
            magic = self._file.read(2)
            if magic not in (b"PK", b"\x80", b""):       # a zip; \x80 opens a pickle
                raise InputError(f"{self.path}: not a checkpoint file (a .npz zip archive of "
                                 f"arrays); it starts with {magic!r}")
            if magic == b"\x80":
                raise InputError(f"{self.path}: refusing to load: the file contains Python objects "
                                 f"(pickle), which could run code; checkpoints hold plain arrays only")
            size = os.fstat(self._file.fileno()).st_size
            self._file.seek(0)
            with self._corrupt():
                self._zip = zipfile.ZipFile(self._file)
                self._headers = _npz_headers(self.path, self._zip, size)
            total = sum(math.prod(s) * d.itemsize for _, s, d in self._headers.values())
            if total > memory_bytes():
                raise InputError(f"{self.path}: its arrays would need {total / 2**30:.1f} GiB, "
                                 f"more than this machine's memory: not a checkpoint of this program")
        except BaseException:
            self.close()
            raise
        self.shapes = {name: shape for name, (_, shape, _) in self._headers.items()}
        self.dtypes = {name: dtype for name, (_, _, dtype) in self._headers.items()}

    def _corrupt(self):
        path = self.path

        class Convert:
            def __enter__(self):
                return self

            def __exit__(self, kind, e, tb):
                if kind is not None and issubclass(kind, _CORRUPT) and not issubclass(kind, InputError):
                    raise InputError(f"{path}: truncated or corrupt checkpoint file "
                                     f"({kind.__name__}: {str(e)[:120]})") from None
                return False
        return Convert()

    def check(self, expected=None, kinds="fiub") -> None:
        """Every array of an allowed number kind; with ``expected`` ({name: shape}), exactly those."""
        _check_names_and_shapes(self.path, self._headers, expected, kinds)

    def read(self, names=None) -> dict:
        """{name: array} for ``names`` (default: all), in the file's order."""
        out = {}
        with self._corrupt():
            for name, (info, _, _) in self._headers.items():
                if names is None or name in names:
                    with self._zip.open(info) as member:
                        out[name] = np.lib.format.read_array(member, allow_pickle=False)
        return out

    def close(self) -> None:
        if self._zip is not None:
            self._zip.close()
        self._file.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def read_arrays(path, expected=None, kinds="fiub", what="checkpoint file") -> dict:
    """The arrays of a .npz file, checked before they are read (see Npz). Never unpickles.

    Args:
        expected: optional {name: shape}; every name must be present with that
            shape (names outside ``expected`` are refused).
        kinds: allowed dtype kinds (f float, i/u integers, b bool).
    Returns:
        {name: array}. InputError (one line naming the file) on any problem:
        not a zip, truncated, pickled objects, wrong names, types or shapes,
        bad checksum; FileNotFoundError if missing.
    """
    with Npz(path, what) as z:
        z.check(expected, kinds)
        return z.read()


def _check_names_and_shapes(path, headers, expected, kinds):
    for name, (_, shape, dtype) in headers.items():
        if dtype.kind not in kinds:
            raise InputError(f"{path}: array {name!r} holds {dtype} values, not numbers")
    if expected is None:
        return
    missing = [k for k in expected if k not in headers]
    if missing:
        raise InputError(f"{path}: lacks array {missing[0]!r}: it was written for a different "
                         f"model configuration (incompatible checkpoint)")
    extra = sorted(set(headers) - set(expected))
    if extra:
        raise InputError(f"{path}: has unknown arrays {extra[:3]}: it was written for a different "
                         f"model configuration (incompatible checkpoint)")
    for name, shape in expected.items():
        if headers[name][1] != tuple(shape):
            raise InputError(f"{path}: array {name!r} has shape {headers[name][1]}, the "
                             f"configuration needs {tuple(shape)}: incompatible checkpoint")


def write_arrays(path, arrays: dict) -> None:
    """np.savez through a temporary file and one rename."""
    files.atomic_write(path, lambda f: np.savez(f, **arrays))


def non_finite(arrays: dict) -> str | None:
    """The name of the first array holding nan or inf, or None."""
    for name, a in arrays.items():
        if a.dtype.kind == "f" and not np.isfinite(a).all():
            return name
    return None


# ----------------------------------------------------------------------------
# The checkpoint: one file
# ----------------------------------------------------------------------------


def pack_checkpoint(params: dict, best: dict | None, moments: dict, state: dict) -> dict:
    """The arrays of checkpoint.npz (``moments``: the optimizer's 'm/NAME', 'v/NAME')."""
    arrays = {f"params/{k}": v for k, v in params.items()}
    if best is not None:
        arrays.update({f"best/{k}": v for k, v in best.items()})
    arrays.update(moments)
    text = json.dumps(state, allow_nan=False).encode("utf-8")
    arrays["state"] = np.frombuffer(text, dtype=np.uint8)
    return arrays


def read_checkpoint(path, shapes: dict, parts=("params", "best", "m", "v", "state"), npz=None):
    """Read checkpoint.npz against the model's parameter shapes.

    Returns {"params": {...}, "best": {...} or None, "moments": {'m/NAME': ...,
    'v/NAME': ...}, "state": dict}; only the requested parts are read (the rest
    None). ``npz``: the file already open as an Npz.
    """
    path = os.fspath(path)
    with (npz if npz is not None else Npz(path)) as z:
        expected = {f"{prefix}/{k}": s for prefix in ("params", "m", "v") for k, s in shapes.items()}
        if any(n.startswith("best/") for n in z.shapes):
            expected.update({f"best/{k}": s for k, s in shapes.items()})
        if "state" not in z.shapes:
            raise InputError(f"{path}: not a checkpoint of a training run (no 'state' array)")
        if len(z.shapes["state"]) != 1 or z.dtypes["state"] != np.uint8:
            raise InputError(f"{path}: corrupt checkpoint file (its 'state' is not text)")
        expected["state"] = z.shapes["state"]
        z.check(expected, kinds="fu")
        floats = [n for n in expected if n != "state" and z.dtypes[n].kind != "f"]
        if floats:
            raise InputError(f"{path}: array {floats[0]!r} holds {z.dtypes[floats[0]]} values, "
                             f"not floating point numbers: corrupt checkpoint file")
        arrays = z.read({n for n in expected if n.split("/")[0] in parts})
    out = {"params": None, "best": None, "moments": None, "state": None}
    if "params" in parts:
        out["params"] = {k: arrays[f"params/{k}"] for k in shapes}
    if "best" in parts and f"best/{next(iter(shapes))}" in arrays:
        out["best"] = {k: arrays[f"best/{k}"] for k in shapes}
    if "m" in parts or "v" in parts:
        out["moments"] = {n: a for n, a in arrays.items() if n.split("/")[0] in ("m", "v")}
    if "state" in parts:
        try:
            out["state"] = json.loads(arrays["state"].tobytes().decode("utf-8"),
                                      parse_constant=lambda c: float("nan"))
        except (UnicodeDecodeError, json.JSONDecodeError, RecursionError) as e:
            raise InputError(f"{path}: corrupt checkpoint file (its state is not JSON: "
                             f"{str(e)[:80]})") from None
    return out


# ----------------------------------------------------------------------------
# The one writer of a run folder
# ----------------------------------------------------------------------------


def _is_leftover(name: str) -> bool:
    return ".tmp-" in name


def check_out_folder(path, overwrite=False) -> None:
    """Refuse an --out that cannot become this run's folder, before any work is done.

    Missing or empty: fine. A file (or a path through one): refused. A folder
    that holds files: refused unless ``overwrite`` and it is a run folder (has
    config.json) or the leftovers of a run killed before it wrote config.json.
    """
    path = os.fspath(path)
    if os.path.lexists(path) and not os.path.isdir(path):
        raise InputError(f"{path}: exists and is not a folder: choose another --out")
    parent = os.path.dirname(os.path.abspath(path))
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if parent and not os.path.isdir(parent):
        raise InputError(f"{path}: cannot create the run folder: {parent} is a file")
    if not os.path.isdir(path):
        return
    names = sorted(os.listdir(path))
    if all(_is_leftover(n) for n in names):      # empty, or a run killed before config.json
        return
    if CONFIG in names or all(_is_leftover(n) or n in RUN_FILES or n == "attention"
                              for n in names):
        if overwrite:
            return
        raise InputError(f"{path}: already holds a run: give --resume {path} to continue it, "
                         f"--overwrite to replace it, or another --out")
    shown = ", ".join(names[:3]) + (", ..." if len(names) > 3 else "")
    raise InputError(f"{path}: is not empty ({shown}) and is not a run folder: choose a new "
                     f"or empty folder for --out")


class RunFolder:
    """The one process writing a run folder: holds its lock until ``close()``."""

    def __init__(self, path, fd):
        self.path, self._fd = os.fspath(path), fd

    # -- taking the folder --------------------------------------------------------------

    @classmethod
    def _lock(cls, path) -> "RunFolder":
        try:
            fd = os.open(path, os.O_RDONLY)
        except OSError as e:
            raise InputError(f"{path}: cannot open the run folder: {e.strerror or e}") from None
        if files.fcntl is not None:
            try:
                files.fcntl.flock(fd, files.fcntl.LOCK_EX | files.fcntl.LOCK_NB)
            except OSError as e:
                os.close(fd)
                if e.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
                    raise InputError(f"{path}: is in use by another process writing to it (a "
                                     f"training, or evaluate --save); one writer at a time: wait "
                                     f"for it to end, or choose another folder") from None
                fd = os.open(path, os.O_RDONLY)      # no locks on this file system: go on
        folder = cls(path, fd)
        for name in os.listdir(path):              # a killed writer's temporary files
            if _is_leftover(name):
                files.remove(os.path.join(path, name))
        return folder

    @classmethod
    def create(cls, path, config: dict, overwrite=False) -> "RunFolder":
        """Make ``path`` a new run folder: lock it, clear it if allowed, write config.json."""
        path = os.fspath(path)
        check_out_folder(path, overwrite)
        try:
            os.makedirs(path, exist_ok=True)
        except OSError as e:
            raise files.cannot_write(path, e) from None
        folder = cls._lock(path)
        try:
            check_out_folder(path, overwrite)                # again, now that we hold the lock
            names = sorted(os.listdir(path), key=lambda n: n != CONFIG)   # config.json first:
            for name in names:                                             # no longer a run
                files.remove(os.path.join(path, name))
            write_json(os.path.join(path, CONFIG), config)
        except BaseException:
            folder.close()
            raise
        return folder

    @classmethod
    def open(cls, path, what="resume") -> "RunFolder":
        """Lock an existing run folder (for --resume, evaluate --save)."""
        path = os.fspath(path)
        if not os.path.isdir(path):
            if os.path.lexists(path):
                raise InputError(f"{path}: is not a run folder (it is a file)")
            raise FileNotFoundError(2, f"run directory not found (nothing to {what})", path)
        folder = cls._lock(path)
        if not os.path.exists(os.path.join(path, CONFIG)):
            folder.close()
            if what == "resume":
                raise InputError(f"{path}: holds no config.json: the training stopped before it "
                                 f"wrote its settings, so there is nothing to resume; start it "
                                 f"again with the same command, without --resume")
            raise InputError(f"{path}: holds no config.json: not a run folder")
        return folder

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    # -- writing ---------------------------------------------------------------------------

    def file(self, name) -> str:
        return os.path.join(self.path, name)

    def write_json(self, name, obj) -> None:
        write_json(self.file(name), obj)

    def write_text(self, name, text: str) -> None:
        files.atomic_write(self.file(name), lambda f: f.write(text.encode("utf-8")))

    def commit(self, params, best, moments, state, publish_weights=True) -> None:
        """Save the checkpoint (one rename), then refresh weights.npz and state.json from it."""
        write_arrays(self.file(CHECKPOINT), pack_checkpoint(params, best, moments, state))
        self.publish(params, best, state, publish_weights)

    def publish(self, params, best, state, weights=True) -> None:
        """weights.npz and state.json: copies of the checkpoint's best weights and state."""
        if weights:
            write_arrays(self.file(WEIGHTS), best if best is not None else params)
        write_json(self.file(STATE), state)
        for name in LEGACY:                          # superseded by checkpoint.npz
            files.remove(self.file(name))


# ----------------------------------------------------------------------------
# Checks on what a run folder holds, before anything is allocated from it (and
# on a new run's size); the random generators' states in the checkpoint
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
    have = memory_bytes()
    if need > have:
        raise InputError(f"{where}: a model of vocabulary {V}, N={N}, D={D}, F={F}, L={L}, H={H} "
                         f"({n_params:.3g} parameters) needs about {need / 2**30:.3g} GiB, more than "
                         f"this machine's {have / 2**30:.3g} GiB: choose a smaller model or batch")


def check_state(state, where: str, steps_per_epoch: int) -> dict:
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
            rng_from_state(state.get(key))
        except (TypeError, ValueError, KeyError, AttributeError, OverflowError):
            bad(key, "not the state of a random generator (PCG64)")
    return state


def rng_state(rng) -> dict:
    """A generator's state as a JSON-able dict (saved in the checkpoint)."""
    return rng.bit_generator.state


def rng_from_state(state) -> np.random.Generator:
    """The generator ``rng_state`` saved, continuing exactly where it was."""
    rng = np.random.default_rng()
    rng.bit_generator.state = state
    return rng


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
    kw = fields_from_json(TrainConfig, conf["train"], f"{where}: field train",
                               defaults={"cloze_copies": 1})
    try:
        return TrainConfig(**kw).resolved()
    except InputError as e:
        raise InputError(f"{where}: {e}") from None


_MODEL_FIELDS_OF_TRAIN = ("max_len", "hidden", "layers", "heads", "ffn", "hidden_dropout",
                          "attention_dropout", "position", "attention", "gelu")


def read_run_config(run_dir):
    """(config.json dict, TrainConfig, model Config) of a run folder, every field checked."""
    path = os.path.join(os.fspath(run_dir), CONFIG)
    conf = read_json(path, "run configuration (config.json)")
    if not isinstance(conf, dict):
        raise InputError(f"{path}: expected an object {{...}}, found {type(conf).__name__}")
    version = conf.get("format_version")
    if version != FORMAT_VERSION:
        raise InputError(f"{path}: checkpoint format version {version!r} is not supported "
                         f"(this minibert4rec reads version {FORMAT_VERSION})")
    if "model" not in conf:
        raise InputError(f"{path}: field model is missing: not the configuration of a run")
    kw = fields_from_json(Config, conf["model"], f"{path}: field model")
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
    check_fits(mcfg, tcfg.eval_batch_size, os.path.join(run_dir, CONFIG), training=False)
    checkpoint = os.path.join(run_dir, CHECKPOINT)
    legacy = os.path.join(run_dir, "weights.npz" if which == "best" else "last.npz")
    with Npz(checkpoint if os.path.exists(checkpoint) else legacy) as npz:
        names = [n.split("/")[-1] for n in npz.shapes]
        layers = {n.split(".")[0] for n in names if n.startswith("layer")}
        if len(layers) != mcfg.layers:            # before listing a claimed 10^7 layers' names
            raise InputError(f"{os.path.join(run_dir, CONFIG)}: field model.layers is "
                             f"{mcfg.layers}, {npz.path} holds {len(layers)} layers: "
                             f"incompatible checkpoint")
        shapes = param_shapes(mcfg)
        if npz.path == checkpoint:
            has_best = any(n.startswith("best/") for n in npz.shapes)
            part = "best" if which == "best" and has_best else "params"
            params = read_checkpoint(checkpoint, shapes, parts=(part,), npz=npz)[part]
            source = f"{checkpoint} ({'best' if part == 'best' else 'last'} weights)"
        else:
            npz.check(shapes, kinds="f")
            params, source = npz.read(), legacy
    bad = non_finite(params)
    if bad is not None:
        raise InputError(f"{source}: parameter {bad!r} holds non-finite values (nan or inf): "
                         f"these weights diverged; train again with a lower --lr")
    params = {k: params[k].astype(np.float32, copy=False) for k in shapes}
    return BERT4Rec(mcfg, params=params), tcfg, conf


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


__all__ = ["load_run", "load_run_and_data", "read_run_config", "saved_train_config",
           "param_shapes", "check_fits", "check_state", "rng_state", "rng_from_state",
           "FORMAT_VERSION", "RunFolder", "Npz", "read_json", "write_json", "read_arrays", "write_arrays",
           "read_checkpoint", "pack_checkpoint", "fields_from_json", "check_out_folder",
           "non_finite", "memory_bytes", "CONFIG", "ITEMS", "CHECKPOINT", "WEIGHTS", "STATE",
           "METRICS", "LEGACY"]
