"""Download the public datasets, verify their checksums, never leave half a file.

The real datasets are not shipped with minibert4rec (MovieLens' licence forbids
redistribution), so ``python -m minibert4rec download NAME`` fetches them into
the data directory (see ``data.resolve_data_dir``):

* ``beauty``: the authors' processed Amazon Beauty, ``data/beauty.txt`` of the
  FeiSun/BERT4Rec GitHub repository -> ``beauty.txt``;
* ``ml-1m`` / ``ml-100k``: the GroupLens zip files, unpacked to ``ml-1m/`` and
  ``ml-100k/``.

Safety, step by step:

1. stream the bytes into a temporary ``NAME.part-XXXX`` file in the data
   directory, hashing them on the way (SHA-256);
2. compare the hash with the published one; on a mismatch or any error
   (network, disk, Ctrl-C) the temporary file is deleted;
3. only then ``os.replace`` it to its final name, an atomic rename: a file under
   the final name is always complete and verified;
4. zips are extracted into a temporary directory that is renamed at the end;
5. files get the mode a plain ``open`` would give them (0644 under the usual
   umask), not the private 0600 of a temporary file;
6. a temporary file or folder that a killed download left behind (``kill -9``
   gives no chance to clean up) is removed by the next download; one that
   another download is still writing is locked by it and left alone.

A file already present with the right checksum is not downloaded again.
"""
from __future__ import annotations

import hashlib
import os
import pathlib
import shutil
import tempfile
import urllib.error
import urllib.request
import zipfile

from tqdm import tqdm

from . import files
from .data import resolve_data_dir
from .errors import InputError

# sha256 values: beauty computed from the authors' file (and checked against the
# project's reference copy); the MovieLens ones are those pinned by public code
# (e.g. TensorFlow model garden / keras-rs for ml-1m, several MovieLens loaders for
# ml-100k, whose archive also matches d2l's published sha1 and GroupLens' md5).
DATASETS = {
    "beauty": dict(
        url="https://raw.githubusercontent.com/FeiSun/BERT4Rec/master/data/beauty.txt",
        sha256="f480b7a7403852342ffd8f9809bb30697dd669be31813d0e204b698fec86ef49",
        filename="beauty.txt",
        unpack=None,                 # a plain text file
        data="beauty.txt",           # what load_dataset reads, relative to the data dir
    ),
    "ml-1m": dict(
        url="https://files.grouplens.org/datasets/movielens/ml-1m.zip",
        sha256="a6898adb50b9ca05aa231689da44c217cb524e7ebd39d264c56e2832f2c54e20",
        filename="ml-1m.zip",
        unpack="ml-1m",              # directory the zip is extracted to
        data="ml-1m/ratings.dat",
    ),
    "ml-100k": dict(
        url="https://files.grouplens.org/datasets/movielens/ml-100k.zip",
        sha256="50d2a982c66986937beb9ffb3aa76efe955bf3d5c6b761f4e3a7cd717c6a3229",
        filename="ml-100k.zip",
        unpack="ml-100k",
        data="ml-100k/u.data",
    ),
}

CHUNK = 1 << 20  # read 1 MiB at a time


def download(name: str, data_dir=None, url: str | None = None, sha256: str | None = None,
             progress: bool = True) -> pathlib.Path:
    """Fetch dataset ``name`` into the data directory; return the file to load.

    Args:
        name: "beauty", "ml-1m" or "ml-100k".
        data_dir: target directory (default: data.resolve_data_dir()).
        url, sha256: override the source and its expected SHA-256 (mirrors, tests).
        progress: show a tqdm progress bar.
    Returns:
        Path of the data file, e.g. DATA_DIR/ml-1m/ratings.dat.
    Raises:
        InputError: unknown name, network error, checksum mismatch, bad zip.
    """
    if name not in DATASETS:
        raise InputError(f"unknown dataset {name!r}: can download {', '.join(DATASETS)}")
    spec = DATASETS[name]
    url = url or spec["url"]
    expected = (sha256 or spec["sha256"]).lower()
    root = resolve_data_dir(data_dir)
    try:
        root.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise files.cannot_write(root, e) from None

    target = root / spec["filename"]
    if target.is_file() and sha256_of(target) == expected:
        print(f"{target} already present, checksum ok")
    else:
        fetch(url, target, expected, progress=progress)
    if spec["unpack"]:
        unpack_zip(target, root / spec["unpack"], spec["unpack"])
    return root / spec["data"]


def sha256_of(path) -> str:
    """Hex SHA-256 of a file, read in chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _locked_temp(folder: pathlib.Path, prefix: str, directory=False):
    """A new temporary file (or folder) in ``folder``, locked against leftover cleaners.

    Leftovers of killed writers (same prefix, unlocked) are removed first.
    Returns (path, fd): the lock lasts until fd is closed.
    """
    files.remove_leftovers(folder, prefix + "*")
    try:
        while True:
            if directory:
                name = tempfile.mkdtemp(dir=folder, prefix=prefix)
                fd = os.open(name, os.O_RDONLY)
            else:
                fd, name = tempfile.mkstemp(dir=folder, prefix=prefix)
            if files.fcntl is not None:
                files.fcntl.flock(fd, files.fcntl.LOCK_EX)
            try:
                if os.path.samestat(os.fstat(fd), os.stat(name)):
                    return pathlib.Path(name), fd      # (not removed by a cleaner meanwhile)
            except FileNotFoundError:
                pass
            os.close(fd)
    except OSError as e:
        raise files.cannot_write(folder, e) from None


def fetch(url: str, target: pathlib.Path, expected_sha256: str, progress: bool = True) -> None:
    """Stream ``url`` to a temp file next to ``target``, verify, rename atomically."""
    target = pathlib.Path(target)
    tmp, fd = _locked_temp(target.parent, target.name + ".part-")
    try:
        with os.fdopen(os.dup(fd), "wb") as out:
            got = _stream(url, out, progress, desc=target.name)
            out.flush()
            os.fsync(out.fileno())
        if got != expected_sha256:
            raise InputError(f"{url}: checksum mismatch: expected sha256 {expected_sha256}, got {got}")
        os.chmod(tmp, files.default_file_mode())             # not mkstemp's private 0600
        files.event("write", tmp)
        os.replace(tmp, target)
        files.event("rename", target)
    except (urllib.error.URLError, OSError, ValueError) as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, InputError):
            raise
        raise InputError(f"{url}: download failed: {getattr(e, 'reason', None) or e}") from e
    except BaseException:        # KeyboardInterrupt and anything unexpected: clean up, re-raise
        tmp.unlink(missing_ok=True)
        raise
    finally:
        os.close(fd)


def _stream(url: str, out, progress: bool, desc: str) -> str:
    """Copy the response body of ``url`` into the open file ``out``; return its sha256.

    A connection closed early is an error (http.client just returns less data).
    """
    digest = hashlib.sha256()
    received = 0
    with urllib.request.urlopen(url, timeout=60) as response:
        total = response.headers.get("Content-Length")
        with tqdm(total=int(total) if total else None, unit="B", unit_scale=True,
                  desc=desc, disable=not progress) as bar:
            for chunk in iter(lambda: response.read(CHUNK), b""):
                out.write(chunk)
                digest.update(chunk)
                bar.update(len(chunk))
                received += len(chunk)
    if total and received != int(total):
        raise InputError(f"{url}: download failed: connection closed after {received} of {total} bytes")
    return digest.hexdigest()


def unpack_zip(archive: pathlib.Path, destination: pathlib.Path, top: str) -> None:
    """Extract ``archive`` so that its folder ``top`` becomes ``destination``.

    Extraction happens in a temporary directory renamed at the end, so
    ``destination`` is either absent or complete. Skipped when it exists.
    """
    if destination.is_dir():
        return
    staging, fd = _locked_temp(destination.parent, destination.name + ".unpack-", directory=True)
    try:
        with zipfile.ZipFile(archive) as zf:
            for member in zf.namelist():
                if member.startswith(("/", "\\")) or ".." in pathlib.PurePosixPath(member).parts:
                    raise InputError(f"{archive}: unsafe path {member!r} in zip")
            zf.extractall(staging)
        source = staging / top if (staging / top).is_dir() else staging
        os.chmod(source, files.default_file_mode(folder=True))   # not mkdtemp's private 0700
        os.replace(source, destination)
        files.event("rename", destination)
    except zipfile.BadZipFile as e:
        raise InputError(f"{archive}: not a valid zip file ({e})") from e
    except OSError as e:
        raise files.cannot_write(destination, e) from None
    finally:
        os.close(fd)
        shutil.rmtree(staging, ignore_errors=True)
