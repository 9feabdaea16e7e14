"""Keeping results safe: output markers, per-directory locks, input/output checks, fingerprints.

- One rule for every output, applied by ``writing_output`` (directories) and
  ``prepare_output_file`` (single files), which every verb's library function goes through: a
  verb writes only into a new directory (or an empty one) or into its own marked output of the
  same kind; never into another lensfinder output (only the outputs made to hold others - an
  ensemble, ``reproduce table1``, the demo - hold the kinds their verb puts there), never inside
  or above one of its inputs, never into a non-empty directory it did not mark, and never over a
  file it did not write.
- An output directory lensfinder made carries a marker file naming what it holds (``store``,
  ``scan``, ...). ``--overwrite`` removes only a directory whose marker says it is that kind of
  output, that holds nothing the verb did not write, and that is not (and does not hold) an
  input of the same command.
- A refused command leaves nothing it created behind (no empty or marker-only directories), and
  a full disk is one line naming the output and saying that a re-run resumes.
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
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path

from lensfinder import __version__
from lensfinder.errors import ConfigError, DataError, LensfinderError
from lensfinder.files import atomic_write_text
from lensfinder.layout import catalog_path

MARKER_FILE = ".lensfinder-output.json"
LOCK_FILE = ".lensfinder.lock"

# -- kinds of output (the marker's ``kind``) ----------------------------------------------------
SIMULATION = "simulation"
INJECTION = "injection"  # lenses painted on a field (inject)
TILES = "tiles"  # simulated mosaic tiles and their catalogue (simulate-tile)
STORE = "store"
TRAIN = "train"
ENSEMBLE = "ensemble"
EVALUATION = "evaluation"
SCAN = "scan"
GALLERY = "gallery"
BN_STUDY = "bn-study"
TABLE1 = "table1"
DEMO = "demo"
# Outputs made to hold other outputs, and the kinds their verb puts there; no other output
# holds one (``pack --overwrite`` of a store once deleted a report written into it).
CONTAINERS: dict[str, frozenset[str]] = {
    # a run (or ensemble) keeps what it made to train on inside: the field painted by
    # ``adapt.paint_lenses``, the pool simulated for ``hard_negatives``
    TRAIN: frozenset({INJECTION, SIMULATION, STORE}),
    ENSEMBLE: frozenset({TRAIN, INJECTION, SIMULATION, STORE}),
    TABLE1: frozenset({SIMULATION, STORE, TRAIN, EVALUATION}),
    DEMO: frozenset({SIMULATION, INJECTION, STORE, TRAIN, EVALUATION, SCAN, GALLERY}),
}
# What an output holds that lensfinder made before its verb marked it: an unmarked directory
# holding all of these files is such an output, and its verb may resume it (and marks it).
UNMARKED_EARLIER: dict[str, tuple[str, ...]] = {
    SIMULATION: (".sim_rows",),
    STORE: ("zarr.json",),
    TRAIN: ("config.yaml",),
    SCAN: ("scan.json",),
    EVALUATION: ("metrics.json", "scores.csv"),
    GALLERY: ("gallery.json", "index.html"),
    BN_STUDY: ("bn_study.json",),
    TABLE1: ("table1.json",),
    ENSEMBLE: ("ensemble.json",),
    DEMO: ("train-layout",),
}
# Outputs that may hold single files another verb writes (``export --onnx RUN/model.onnx``).
FILE_HOLDERS = frozenset({TRAIN, ENSEMBLE})
DISK_FULL = (errno.ENOSPC, errno.EDQUOT)


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
    directory: str | Path,
    kind: str,
    inputs: Iterable[str | Path],
    verb: str,
    owns: Callable[[Path], bool] | None = None,
) -> None:
    """``--overwrite``: delete ``directory`` only if lensfinder marked it as a ``kind`` output,
    it holds nothing the verb did not write (``owns``: whether a top-level entry is the verb's)
    and it is not (and does not hold) an input; otherwise refuse, deleting nothing."""
    directory = Path(directory)
    check_not_input(directory, inputs, verb)
    if not directory.exists():
        return
    _check_removable(directory, kind, verb, owns)
    shutil.rmtree(directory)


def _check_removable(
    directory: Path, kind: str, verb: str, owns: Callable[[Path], bool] | None
) -> None:
    found = output_kind(directory) if directory.is_dir() else None
    if found != kind:
        what = f"a lensfinder {found} output" if found else "not marked as a lensfinder output"
        raise ConfigError(
            f"{directory}: --overwrite removes only a {kind} that lensfinder wrote, and this is "
            f"{what}; remove it yourself or choose another output"
        )
    for entry in directory.iterdir():
        if entry.name in (MARKER_FILE, LOCK_FILE) or (owns is not None and owns(entry)):
            continue
        nested = output_kind(entry) if entry.is_dir() else None
        what = f"a lensfinder {nested} output" if nested else f"not written by {verb}"
        raise ConfigError(
            f"{directory}: holds {entry.name} ({what}); --overwrite removes nothing it did not "
            "write: move it out first or choose another output"
        )


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


def prepare_output(
    out: str | Path,
    kind: str,
    inputs: Iterable[str | Path],
    verb: str,
    overwrite: bool = False,
    owns: Callable[[Path], bool] | None = None,
) -> Path:
    """Check, creating nothing, that ``verb`` may write its ``kind`` output at ``out``: a new
    or empty directory, or its own ``kind`` output (which it resumes); not inside or above an
    input, not inside another lensfinder output (but for the kinds a container holds).
    ``overwrite``: an existing ``out`` must be one ``remove_output`` may delete. ConfigError,
    one line naming the path, otherwise; returns ``out``."""
    out = check_output_dir(out)
    inputs = list(inputs)
    check_not_input(out, inputs, verb)
    target = out.resolve()
    for item in inputs:
        source = Path(item).expanduser().resolve()
        if source in target.parents and source.is_dir():
            raise ConfigError(
                f"{out}: lies inside {item}, an input of {verb}; choose an output outside it"
            )
    for folder in target.parents:
        found = output_kind(folder)
        if found is not None and kind not in CONTAINERS.get(found, ()):
            raise ConfigError(
                f"{out}: lies inside {folder}, a lensfinder {found} output; {verb} writes "
                "nothing into another output (choose another output)"
            )
    if out.exists():
        if overwrite:
            _check_removable(out, kind, verb, owns)
        else:
            _check_own(out, kind, verb)
    return out


def _check_own(out: Path, kind: str, verb: str) -> None:
    """``out`` exists: it must be empty, or ``verb``'s own ``kind`` output."""
    found = output_kind(out)
    if found == kind:
        return
    if found is not None:
        raise ConfigError(
            f"{out}: is a lensfinder {found} output; {verb} writes only into a new directory or "
            f"its own {kind} output (choose another output)"
        )
    with os.scandir(out) as entries:
        first = next((e.name for e in entries if e.name != LOCK_FILE), None)
    if first is None:
        return
    earlier = UNMARKED_EARLIER.get(kind)
    if earlier and all((out / name).exists() for name in earlier):
        return
    raise ConfigError(
        f"{out}: is not empty ({first}, ...) and not a {kind} output of lensfinder; {verb} "
        "writes only into a new or empty directory or its own output (choose another output)"
    )


def prepare_output_file(
    path: str | Path, verb: str, made_by: Callable[[Path], bool], what: str
) -> Path:
    """Check that ``verb`` may write the single file ``path``: a new file, or one it wrote
    before (``made_by``, described by ``what``), in a place that is no lensfinder output but a
    run directory (``export --onnx RUN/model.onnx``). ConfigError naming the path otherwise."""
    path = Path(path).expanduser()
    if path.is_dir():
        raise ConfigError(f"{path}: is a directory; give a file path")
    check_output_dir(path.parent)
    folder = path.parent.resolve()
    holder = next((f for f in (folder, *folder.parents) if output_kind(f) is not None), None)
    found = output_kind(holder) if holder is not None else None
    if holder is not None and found not in FILE_HOLDERS:
        raise ConfigError(
            f"{path}: lies inside {holder}, a lensfinder {found} output; {verb} writes nothing "
            "into another output (choose another path)"
        )
    if (path.exists() or path.is_symlink()) and not made_by(path):
        raise ConfigError(
            f"{path}: exists and is not {what}; {verb} replaces only {what} (choose another path)"
        )
    return path


@contextlib.contextmanager
def writing_output(
    out: str | Path,
    kind: str,
    verb: str,
    inputs: Iterable[str | Path] = (),
    *,
    overwrite: bool = False,
    staged: bool = False,
    owns: Callable[[Path], bool] | None = None,
) -> Iterator[Path]:
    """The one way a verb writes its output directory: ``prepare_output``'s checks, then the
    output's lock for the whole block, the marker, and ``disk_full_errors``.

    A failure that leaves nothing but markers (a refusal after the checks) removes what this
    call created: no empty or marker-only directories stay behind. ``staged``: the verb writes
    a copy beside ``out`` and renames it into place when complete (``pack``), so the lock sits
    beside ``out``, the verb marks its copy itself, and ``overwrite`` removes the old ``out``
    (``remove_output``, with ``owns``) once the lock is held.
    """
    inputs = list(inputs)
    if overwrite and not staged:
        raise ValueError("overwrite replaces only a staged output")
    out = prepare_output(out, kind, inputs, verb, overwrite, owns)
    created = _topmost_missing(out)
    had_marker = output_kind(out) == kind
    lock_file = out.parent / f".{out.name}.lock" if staged else None
    try:
        with disk_full_errors(out), output_lock(out, verb, lock_file=lock_file):
            if overwrite:
                remove_output(out, kind, inputs, verb, owns)
            if not staged:
                mark_output(out, kind)
            yield out
    except BaseException:
        with contextlib.suppress(OSError):
            _remove_unless_written(out, created, had_marker)
        raise


def _topmost_missing(path: Path) -> Path | None:
    """The highest directory of ``path`` and its parents that does not exist yet."""
    top = None
    probe = path.absolute()
    while not probe.exists() and probe.parent != probe:
        top, probe = probe, probe.parent
    return top


def _holds_results(directory: Path) -> bool:
    """Whether anything but output markers (and empty folders) lies under ``directory``; a
    lock file counts, as another writer may hold it."""
    if directory.is_file():
        return True
    return any(name != MARKER_FILE for _, _, files in os.walk(directory) for name in files)


def _remove_unless_written(out: Path, created: Path | None, had_marker: bool) -> None:
    """After a failure: remove the directories this call created, or the marker it added, if
    nothing else was written."""
    if created is not None:
        if created.exists() and not _holds_results(created):
            shutil.rmtree(created)
    elif not had_marker and out.is_dir() and not _holds_results(out):
        (out / MARKER_FILE).unlink(missing_ok=True)


# -- full disks --------------------------------------------------------------------------------
def _disk_full(exc: BaseException) -> str | None:
    """The system's words if ``exc`` (or what caused it) is a full disk or quota, else None.
    Rust writers (safetensors) report the OS error in their message only."""
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, OSError) and seen.errno in DISK_FULL:
            return seen.strerror or os.strerror(seen.errno)
        for code in DISK_FULL:
            if f"(os error {code})" in str(seen):
                return os.strerror(code)
        seen = seen.__cause__ or seen.__context__
    return None


@contextlib.contextmanager
def disk_full_errors(out: str | Path) -> Iterator[None]:
    """A full disk (or quota) while writing ``out`` becomes one line naming it and saying how
    to go on: every verb writes atomically and resumes, so finished work is kept."""
    try:
        yield
    except LensfinderError:
        raise
    except Exception as exc:
        reason = _disk_full(exc)
        if reason is None:
            raise
        where = getattr(exc, "filename", None)
        inside = where is not None and Path(out).absolute() in Path(where).absolute().parents
        detail = f" (writing {where})" if inside else ""
        raise DataError(
            f"{out}: {reason.lower()}{detail}; finished work is kept, free some space and "
            "re-run to resume"
        ) from None


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
