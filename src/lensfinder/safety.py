"""Keeping results safe: output markers, per-directory locks, input/output checks, fingerprints.

- An output directory lensfinder made carries a marker file naming what it holds (``store``,
  ``scan``, ...). ``--overwrite`` removes only a directory whose marker says it is that kind of
  output, and never one that is (or holds) an input of the same command.
- A writer holds an exclusive lock on its output directory for its whole run. The lock is an
  ``flock`` on a small file that also names the holder (verb, PID, host, start time), so a second
  writer is refused with who holds it, and a lock left by a dead process is free again (the
  kernel drops ``flock`` locks when their process dies).
- Output paths are checked before any work starts: an existing file, a non-directory parent or
  an unwritable place give one line naming the path.
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import hashlib
import json
import os
import shutil
import socket
import time
from collections.abc import Iterable, Iterator
from pathlib import Path

from lensfinder import __version__
from lensfinder.errors import ConfigError
from lensfinder.layout import catalog_path
from lensfinder.utils import atomic_write_text

MARKER_FILE = ".lensfinder-output.json"
LOCK_FILE = ".lensfinder.lock"


# -- output markers ----------------------------------------------------------------------------
def mark_output(directory: str | Path, kind: str) -> None:
    """Record that lensfinder made ``directory`` as a ``kind`` output (for ``--overwrite``)."""
    record = {"kind": kind, "lensfinder_version": __version__}
    atomic_write_text(Path(directory) / MARKER_FILE, json.dumps(record) + "\n")


def output_kind(directory: str | Path) -> str | None:
    """The kind recorded by ``mark_output``, or None for a directory lensfinder did not mark."""
    try:
        record = json.loads((Path(directory) / MARKER_FILE).read_text())
    except (OSError, ValueError):
        return None
    return record.get("kind") if isinstance(record, dict) else None


def _same_or_inside(path: Path, other: Path) -> bool:
    return path == other or other in path.parents


def check_not_input(out: str | Path, inputs: Iterable[str | Path], verb: str) -> None:
    """Refuse an output that is one of the command's inputs, or lies above one (removing or
    rewriting it would destroy the input)."""
    target = Path(out).expanduser().resolve()
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if _same_or_inside(source, target):
            raise ConfigError(
                f"{out}: is {'the' if source == target else 'a folder holding the'} input "
                f"{item} of {verb}; choose another output"
            )


def remove_output(
    directory: str | Path, kind: str, inputs: Iterable[str | Path], verb: str
) -> None:
    """``--overwrite``: delete ``directory`` only if lensfinder marked it as a ``kind`` output
    and it is not (and does not hold) an input; otherwise refuse, deleting nothing."""
    directory = Path(directory)
    check_not_input(directory, inputs, verb)
    if not directory.exists():
        return
    found = output_kind(directory) if directory.is_dir() else None
    if found != kind:
        what = f"a lensfinder {found} output" if found else "not marked as a lensfinder output"
        raise ConfigError(
            f"{directory}: --overwrite removes only a {kind} that lensfinder wrote, and this is "
            f"{what}; remove it yourself or choose another output"
        )
    shutil.rmtree(directory)


# -- output paths ------------------------------------------------------------------------------
def check_output_dir(out: str | Path) -> Path:
    """An output directory path that can be created and written, checked without creating it;
    ConfigError (one line naming the path) otherwise."""
    out = Path(out).expanduser()
    if out.exists() and not out.is_dir():
        raise ConfigError(f"{out}: exists and is not a directory (expected an output directory)")
    probe = out
    while not probe.exists():
        if probe.parent == probe:
            break
        probe = probe.parent
    if probe.exists() and not probe.is_dir():
        raise ConfigError(f"{out}: cannot be created, {probe} is a file, not a directory")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise ConfigError(f"{out}: cannot write there ({probe} is not writable)")
    return out


def make_output_dir(out: str | Path) -> Path:
    """Create an output directory (and parents); ConfigError naming the path if impossible."""
    out = check_output_dir(out)
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"{out}: cannot create output directory ({exc.strerror})") from None
    return out


# -- locks -------------------------------------------------------------------------------------
def _holder(verb: str) -> dict[str, object]:
    return {
        "verb": verb,
        "pid": os.getpid(),
        "host": socket.gethostname(),
        "since": time.strftime("%Y-%m-%d %H:%M:%S"),
    }


def _describe(raw: str) -> str:
    try:
        info = json.loads(raw)
        return (
            f"lensfinder {info['verb']} (PID {info['pid']} on host {info['host']}, "
            f"since {info['since']})"
        )
    except (ValueError, KeyError, TypeError):
        return "another lensfinder process"


@contextlib.contextmanager
def output_lock(out: str | Path, verb: str, lock_file: str | Path | None = None) -> Iterator[Path]:
    """Hold the exclusive write lock of output directory ``out`` (created if needed).

    A second writer gets ConfigError naming the holder's verb, PID and host. A lock file left by
    a process that died is not held by anyone (``flock`` ends with its process), so it is taken
    over. ``lock_file`` puts the lock elsewhere (``pack`` locks beside its output, which only
    appears at the end).
    """
    if lock_file is None:
        path = make_output_dir(out) / LOCK_FILE
    else:
        make_output_dir(Path(lock_file).parent)
        path = Path(lock_file)
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError as exc:
            os.close(fd)
            if exc.errno not in (errno.EAGAIN, errno.EACCES, errno.EWOULDBLOCK):
                raise ConfigError(f"{path}: cannot lock ({exc.strerror})") from None
            try:
                holder = _describe(path.read_text())
            except OSError:
                holder = "another lensfinder process"
            raise ConfigError(
                f"{out}: in use by {holder}; wait for it to finish or choose another output"
            ) from None
        try:  # the file we locked must still be the one at ``path`` (a releaser unlinks it)
            same = os.fstat(fd).st_ino == os.stat(path).st_ino
        except FileNotFoundError:
            same = False
        if same:
            break
        os.close(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, (json.dumps(_holder(verb)) + "\n").encode())
        yield path
    finally:
        with contextlib.suppress(OSError):
            path.unlink()
        os.close(fd)


# -- fingerprints ------------------------------------------------------------------------------
def layout_fingerprint(root: str | Path, files: Iterable[Path]) -> str:
    """Content fingerprint of a layout: name, size and modification time of every image file,
    and the catalogue's bytes. Rewriting any file (even with the same IDs) changes it."""
    digest = hashlib.sha256()
    for path in sorted(files):
        stat = path.stat()
        digest.update(f"{path.name}:{stat.st_size}:{stat.st_mtime_ns}\n".encode())
    catalogue = catalog_path(root)
    if catalogue.is_file():
        digest.update(catalogue.read_bytes())
    return digest.hexdigest()[:16]
