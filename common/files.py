"""Files written safely: atomically (a unique temporary file, then a rename), under a lock, with a checksum.
Every file the project writes (datasets, checkpoints, results, adapters) goes through these."""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import weakref


def atomic_write(path: str, write, mode: str = "wb") -> None:
    """write(f) into a temporary file of a unique name beside path, then rename it to path: a killed or
    a concurrent writer leaves the old file or a whole new one, never half of one, and two writers
    never share a temporary file."""
    folder = os.path.dirname(path) or "."
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=os.path.basename(path) + ".", suffix=".tmp")
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make shared results private
        with os.fdopen(fd, mode) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def lock_folder(folder: str, what: str):
    """Create folder and hold an exclusive lock on folder/.lock for as long as the returned file is open
    (the OS drops it when the process dies, so a killed run never leaves a stale lock). Raises a
    one-line error when the folder cannot be written or another process holds the lock."""
    import fcntl

    try:
        os.makedirs(folder, exist_ok=True)
        f = open(os.path.join(folder, ".lock"), "w")
    except OSError as e:
        raise ValueError(f"cannot write into {folder} ({e.strerror}); choose a writable --run-dir") from None
    try:
        fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        f.close()
        raise RuntimeError(f"another process is running {folder}; wait for it to finish, or {what}") from None
    # a run that ends in an error or Ctrl-C leaves no .lock file behind: when the lock is dropped (garbage
    # collected, or at exit) its file is removed, if it is still this lock's file and not a newer run's
    weakref.finalize(f, _drop_lock, f.name, os.fstat(f.fileno()).st_ino)
    return f


def _drop_lock(path: str, inode: int) -> None:
    with contextlib.suppress(OSError):
        if os.stat(path).st_ino == inode:
            os.unlink(path)


def file_sha256(path: str) -> str:
    """The SHA-256 of a file (a pretrained checkpoint, recorded in every adapter's manifest)."""
    import hashlib

    with open(path, "rb") as f:
        return hashlib.sha256(f.read()).hexdigest()


def read_json(path: str):
    """A JSON file's content, or None when it is missing or unreadable (a cache entry to remake)."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError):
        return None


def atomic_write_json(path: str, obj) -> None:
    atomic_write(path, lambda f: json.dump(obj, f, indent=1), "w")


def atomic_torch_save(obj, path: str) -> None:
    """torch.save, written atomically (see atomic_write)."""
    import torch

    atomic_write(path, lambda f: torch.save(obj, f))


def format_bytes(n: int) -> str:
    return f"{n / 1e3:.2f} KB" if n < 1e5 else f"{n / 1e6:.2f} MB"


def check_folder(folder: str, where: str, need_bytes: int = 0) -> None:
    """Before any work: a one-line error naming `where` (the flag or variable that chose the folder) if a file
    cannot be written into folder (made if missing) or its disk has less than need_bytes free."""
    import shutil

    try:
        os.makedirs(folder, exist_ok=True)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=".write_check.", suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
    except OSError as e:
        raise ValueError(f"cannot write into {folder} ({e.strerror}); choose a writable {where}") from None
    free = shutil.disk_usage(folder).free
    if free < need_bytes:
        raise ValueError(f"{folder} has {format_bytes(free)} free and this writes about {format_bytes(need_bytes)}; free space "
                         f"or choose another {where}")


def check_writable(path: str, where: str, need_bytes: int = 0) -> None:
    """check_folder for the folder of a file about to be written at path, which must not be a folder itself."""
    if os.path.isdir(path):
        raise ValueError(f"{where} {path} is a folder; give a file path, e.g. {os.path.join(path, 'out.json')}")
    check_folder(os.path.dirname(os.path.abspath(path)), where, need_bytes)
