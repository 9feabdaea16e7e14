"""The stage runner: the one shape every verb's run has, from the CLI and from Python alike.

``run_stage`` (an output directory) and ``file_stage`` (one output file) wrap a stage's body:

- the output is prepared by the one output rule (``safety.writing_output``: a new or empty
  directory or the verb's own marked output of the same kind, never inside or above an input,
  nothing left behind by a refusal, a full disk in one line) and its lock is held throughout;
- progress and quiet are decided here: ``LENSFINDER_QUIET`` is read only by ``quiet``, a
  caller's ``progress=`` is resolved once into ``Stage.progress``, and ``progress_bar`` (every
  progress bar of the package) asks ``quiet`` too;
- what a person running it should read goes through ``report`` (step headers, one line per row,
  warnings are logged), never ``print``: library code logs or returns a summary object, and the
  CLI (``show_reports``) puts the reports on stderr and the summary on stdout;
- ``Stage.finish`` logs the result's summary and returns it.

So ``evaluate()`` called from a script (or from ``demo`` and ``reproduce table1``) is guarded
and locked exactly as ``lensfinder evaluate`` is.
"""

from __future__ import annotations

import contextlib
import logging
import os
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Protocol, TextIO, TypeVar

from lensfinder.safety import disk_full_errors, prepare_output_file, writing_output

if TYPE_CHECKING:
    from tqdm import tqdm

QUIET_ENV = "LENSFINDER_QUIET"  # set (to anything but empty): no progress bars, no reports
REPORTS = logging.getLogger("lensfinder.report")  # lines for the person running a stage
SUMMARIES = logging.getLogger("lensfinder.stages")  # each stage's summary, for scripts' logs

T = TypeVar("T")


class Summarised(Protocol):
    """A stage's result: it says in a few lines what was done and where it went."""

    def summary(self) -> str: ...


R = TypeVar("R", bound=Summarised)


# -- quiet and progress ------------------------------------------------------------------------
def quiet() -> bool:
    """Whether the user asked for silence (``LENSFINDER_QUIET``): the only place it is read."""
    return bool(os.environ.get(QUIET_ENV))


def show_progress(progress: bool = True) -> bool:
    """A caller's ``progress=`` resolved: bars only when asked for and not quiet."""
    return progress and not quiet()


def progress_bar(iterable: Iterable[T], total: int | None = None, desc: str = "", **kw) -> tqdm[T]:
    """A progress bar with rate and ETA (tqdm), on stderr; silent when ``quiet``."""
    from tqdm.auto import tqdm

    return tqdm(iterable, total=total, desc=desc, disable=quiet(), dynamic_ncols=True, **kw)


# -- reports -----------------------------------------------------------------------------------
def report(text: str) -> None:
    """A line for the person running a stage (a step header, a row finished), unless quiet.

    Logged (``lensfinder.report``, INFO): the CLI shows it on stderr (``show_reports``), a
    script sees it when it configures logging."""
    if not quiet():
        REPORTS.info(text)


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test runner swaps it per call)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self) -> TextIO:
        return sys.stderr

    @stream.setter
    def stream(self, value: TextIO) -> None:  # StreamHandler sets it; the property wins
        pass


def _shown_on_the_command_line(record: logging.LogRecord) -> bool:
    return record.name == REPORTS.name or record.levelno >= logging.WARNING


def show_reports() -> None:
    """Put ``report`` lines and lensfinder's warnings on stderr, as plain lines: the CLI's
    reporting hook (installed once per process; stage summaries stay for the CLI to print)."""
    root = logging.getLogger("lensfinder")
    if any(isinstance(h, _CurrentStderr) for h in root.handlers):
        return
    handler = _CurrentStderr()
    handler.setFormatter(logging.Formatter("%(message)s"))
    handler.addFilter(_shown_on_the_command_line)
    root.addHandler(handler)
    root.setLevel(logging.INFO)


# -- the runner --------------------------------------------------------------------------------
@dataclass
class Stage:
    """One run of a verb: where it writes, whether to show progress, when it began."""

    verb: str
    out: Path
    progress: bool  # progress bars wanted (the caller's ``progress=``, and not quiet)
    began: float = field(default_factory=time.perf_counter)

    @property
    def seconds(self) -> float:
        """Wall time since the stage began."""
        return time.perf_counter() - self.began

    def finish(self, result: R) -> R:
        """Log ``result``'s summary (scripts' logs; the CLI prints it) and return it."""
        SUMMARIES.info("%s (%.1f s): %s", self.verb, self.seconds, result.summary())
        return result


@contextlib.contextmanager
def run_stage(
    verb: str,
    kind: str,
    out: str | Path,
    inputs: Iterable[str | Path] = (),
    *,
    progress: bool = True,
    overwrite: bool = False,
    staged: bool = False,
    owns: Callable[[Path], bool] | None = None,
    follower: bool = False,
) -> Iterator[Stage]:
    """Run a stage that writes the ``kind`` output directory ``out``: the output rule and the
    lock for the whole block (``safety.writing_output``, with its ``overwrite``, ``staged`` and
    ``owns``), ``progress`` resolved. ``follower``: a DDP process other than rank 0, which
    prepared ``out`` and holds its lock; this one only gets the stage."""
    if follower:
        yield Stage(verb, Path(out), show_progress(progress))
        return
    began = time.perf_counter()
    with writing_output(
        out, kind, verb, inputs, overwrite=overwrite, staged=staged, owns=owns
    ) as out_dir:
        yield Stage(verb, out_dir, show_progress(progress), began)


@contextlib.contextmanager
def file_stage(
    path: str | Path,
    verb: str,
    made_by: Callable[[Path], bool],
    what: str,
    *,
    progress: bool = True,
) -> Iterator[Stage]:
    """Run a stage that writes one file ``path`` (``export``): the output rule for files
    (``safety.prepare_output_file``: a new file, or one ``made_by`` says the verb wrote, not
    inside another output but a run) checked before the work, a full disk in one line. No lock:
    the file is written atomically, so two writers leave one whole file."""
    out = prepare_output_file(path, verb, made_by, what)
    with disk_full_errors(out):
        yield Stage(verb, out, show_progress(progress))
