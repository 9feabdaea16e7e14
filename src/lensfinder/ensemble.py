"""An ensemble directory: ``ensemble.json`` naming member run directories, used as one model.

``lensfinder train --members N`` writes ``OUT/member-0 .. member-N-1`` (each a normal run
directory) and then ``OUT/ensemble.json``; every command that takes a model accepts ``OUT`` and
expands it here into its members, which the Predictor averages as any list of models.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from lensfinder.errors import ModelFileError
from lensfinder.files import atomic_write_text

ENSEMBLE_FILE = "ensemble.json"
ENSEMBLE_FORMAT = 1


def member_dir(out: Path, index: int) -> Path:
    return Path(out) / f"member-{index}"


def is_ensemble(path: str | Path) -> bool:
    return (Path(path) / ENSEMBLE_FILE).is_file()


def write_ensemble(
    out: str | Path, members: Sequence[Path], averaging: str, extra: dict[str, Any] | None = None
) -> Path:
    """Write ``out/ensemble.json`` (members as paths relative to ``out``, so it can be moved)."""
    out = Path(out)
    record = {
        "format": ENSEMBLE_FORMAT,
        "members": [Path(m).relative_to(out).as_posix() for m in members],
        "averaging": averaging,
        **(extra or {}),
    }
    path = out / ENSEMBLE_FILE
    atomic_write_text(path, json.dumps(record, indent=2) + "\n")
    return path


def read_ensemble(path: str | Path) -> dict[str, Any]:
    """The checked record of an ensemble directory; ``members`` resolved to paths."""
    file = Path(path) / ENSEMBLE_FILE
    try:
        record = json.loads(file.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ModelFileError(f"{file}: cannot read the ensemble record ({exc})") from None
    members = record.get("members") if isinstance(record, dict) else None
    if not isinstance(members, list) or not members or not all(isinstance(m, str) for m in members):
        raise ModelFileError(f"{file}: no 'members' list of run directories")
    if int(record.get("format", 0)) > ENSEMBLE_FORMAT:
        raise ModelFileError(f"{file}: written by a newer lensfinder; upgrade lensfinder")
    resolved = [Path(path) / m for m in members]
    missing = [str(m) for m in resolved if not m.is_dir()]
    if missing:
        raise ModelFileError(f"{file}: member run directory missing: {', '.join(missing)}")
    return {**record, "members": resolved}


def expand_models(paths: Iterable[str | Path]) -> list[Path]:
    """Model paths with every ensemble directory replaced by its members, in order."""
    expanded: list[Path] = []
    for path in map(Path, paths):
        expanded += read_ensemble(path)["members"] if is_ensemble(path) else [path]
    return expanded
