"""A run's workdir: the lock its one writer holds, the resolved config, JSON results
(written atomically), and filesystem errors as one-line messages naming the path."""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import socket

LOCK_FILE = "lock"


class WorkdirError(ValueError):
    """A workdir that cannot be used: in use, not a folder, not writable."""


def describe(error: OSError) -> str:
    """'PATH: cause' for an OSError (e.g. 'runs/x/eval: Read-only file system')."""
    cause = error.strerror or str(error)
    return f"{error.filename}: {cause}" if error.filename else cause


def create(workdir: str) -> None:
    """Makes the workdir (and its parents); WorkdirError naming it if it cannot be one."""
    try:
        os.makedirs(workdir, exist_ok=True)
    except FileExistsError:
        raise WorkdirError(f"--workdir={workdir}: exists and is not a folder") from None
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir}: cannot create it ({e.strerror})") from None


@contextlib.contextmanager
def held(workdir: str):
    """Holds the workdir for one writer while the block runs: an exclusive lock on
    `workdir/lock` (which records the holder's process id and host). The kernel releases
    it when the process ends, however it ends, so a crashed run never leaves it stuck.
    WorkdirError naming the workdir and the holder if another process holds it."""
    path = os.path.join(workdir, LOCK_FILE)
    try:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as e:
        raise WorkdirError(f"--workdir={workdir}: cannot write there ({e.strerror})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as e:
        holder = os.pread(fd, 256, 0).decode(errors="replace").strip() or "another process"
        os.close(fd)
        if e.errno not in (errno.EAGAIN, errno.EACCES):
            raise WorkdirError(f"--workdir={workdir}: cannot lock {path} ({e.strerror})") from None
        raise WorkdirError(f"--workdir={workdir}: in use by {holder}; wait for it to end or choose "
                           "another workdir") from None
    try:
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"process {os.getpid()} on {socket.gethostname()}\n".encode(), 0)
        yield
    finally:
        os.close(fd)


def save_json(path: str, obj) -> None:
    """Writes JSON atomically (temp file, then rename), creating the folder."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = path + ".tmp"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(obj, f, indent=2, ensure_ascii=False)
    os.replace(tmp, path)


def read_json(path: str):
    """The JSON value in `path`, or None if there is none or it cannot be read."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def save_config(workdir: str, config) -> None:
    """`workdir/config.json`: the resolved config of the run."""
    save_json(os.path.join(workdir, "config.json"), json.loads(config.to_json_best_effort()))
