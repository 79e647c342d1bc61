"""Writing files so that a crash, a kill or a second process never leaves a broken one.

Three tools, used by every writer in the package (run folders, downloads):

* ``atomic_write(path, write)``: ``write(f)`` fills ``f``, the open file
  ``PATH.tmp-PID``, which is flushed to disk and renamed onto ``PATH``
  (``os.replace``, atomic on POSIX).
  A reader sees the old file or the new one, never half of one. An error while
  writing removes the temporary file and is reported as one line naming PATH.
* locks: a writer holds an exclusive advisory lock (``flock``) on what it
  writes (a run folder, a download's temporary file) as long as it works. The
  operating system drops it when the process ends, even on ``kill -9``, so a
  lock is never stale; a second writer is told at once (``runs.RunFolder``).
* ``remove_leftovers(folder, pattern)``: a temporary file or folder left by a
  killed writer is removed by the next one. Temporaries that are still being
  written are locked by their writer and are left alone (``is_locked``).

For the tests of crash safety, every file written, renamed or removed through
this module is an *event*. Two environment variables read at each event (they
change nothing when unset):

* ``MINIBERT4REC_WRITE_LOG=PATH`` appends one line per event to PATH;
* ``MINIBERT4REC_KILL_AFTER_WRITE=K`` kills the process (SIGKILL, as a power
  cut or ``kill -9``) right after its K-th event.
"""
from __future__ import annotations

import errno
import fnmatch
import os
import shutil
import signal

from .errors import InputError

try:                                   # POSIX; elsewhere locks are not available
    import fcntl
except ImportError:                    # pragma: no cover
    fcntl = None

_events = 0


def event(what: str, path) -> None:
    """Record one write/rename/remove (see the module docstring: a test hook)."""
    global _events
    log = os.environ.get("MINIBERT4REC_WRITE_LOG")
    kill_after = os.environ.get("MINIBERT4REC_KILL_AFTER_WRITE")
    if not log and not kill_after:
        return
    _events += 1
    if log:
        with open(log, "a") as f:
            f.write(f"{_events} {what} {os.path.basename(os.fspath(path))}\n")
    if kill_after and _events == int(kill_after):
        os.kill(os.getpid(), signal.SIGKILL)


def cannot_write(path, e: OSError) -> InputError:
    """One line for a failed write: the file we meant, not its temporary name."""
    reason = e.strerror or str(e)
    if e.errno in (errno.EACCES, errno.EPERM, errno.EROFS):
        reason += " (the folder is read-only for you: choose another one)"
    elif e.errno == errno.ENOSPC:
        reason += " (the disk is full)"
    elif e.errno in (errno.ENOTDIR, errno.EEXIST):
        reason += " (a part of the path is a file, not a folder)"
    return InputError(f"{os.fspath(path)}: cannot write: {reason}")


def fsync_folder(folder) -> None:
    """Make a rename in ``folder`` durable (no-op where folders cannot be opened)."""
    try:
        fd = os.open(os.fspath(folder), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def atomic_write(path, write) -> None:
    """Write ``path`` through a temporary file and one rename.

    write: called with the temporary file, open in binary mode; it writes the
    whole content. InputError (one line naming ``path``) if the
    folder cannot be written; any other exception is re-raised after the
    temporary file is removed.
    """
    path = os.fspath(path)
    tmp = f"{path}.tmp-{os.getpid()}"
    try:
        try:
            with open(tmp, "wb") as f:
                write(f)
                f.flush()
                os.fsync(f.fileno())
            event("write", tmp)
            os.replace(tmp, path)
        except OSError as e:
            raise cannot_write(path, e) from None
        event("rename", path)
        fsync_folder(os.path.dirname(path) or ".")
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def remove(path) -> None:
    """Remove a file or a folder tree if it exists (an event)."""
    path = os.fspath(path)
    if os.path.isdir(path) and not os.path.islink(path):
        shutil.rmtree(path, ignore_errors=True)
    elif os.path.lexists(path):
        try:
            os.remove(path)
        except FileNotFoundError:
            return
    else:
        return
    event("remove", path)


def is_locked(path) -> bool:
    """True if another open file holds a lock on ``path`` (a file, or a folder's lock file)."""
    if fcntl is None or not os.path.lexists(path):
        return False
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        return False
    except OSError:
        return True
    finally:
        os.close(fd)                    # also drops the lock we may just have taken


def remove_leftovers(folder, pattern: str, lock_name: str | None = None) -> list[str]:
    """Remove the entries of ``folder`` matching ``pattern`` that nobody is writing.

    An entry is being written if it is locked: a file by ``flock`` on itself, a
    folder by ``flock`` on its file ``lock_name``. Returns the removed names.
    """
    try:
        names = os.listdir(folder)
    except OSError:
        return []
    removed = []
    for name in sorted(fnmatch.filter(names, pattern)):
        path = os.path.join(folder, name)
        probe = os.path.join(path, lock_name) if lock_name and os.path.isdir(path) else path
        if is_locked(probe):
            continue
        remove(path)
        removed.append(name)
    return removed


def default_file_mode(folder=False) -> int:
    """The mode a plain ``open(..., 'w')`` (``os.mkdir``) gives a new file (folder):
    0o666 (0o777) less the umask, e.g. 0o644 (0o755)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if folder else 0o666) & ~umask


__all__ = ["atomic_write", "remove_leftovers", "remove", "is_locked", "fsync_folder",
           "cannot_write", "default_file_mode", "event"]
