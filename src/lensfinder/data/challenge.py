"""Reading the Lens Finding Challenge 2 layout: list objects, read the catalogue, read FITS.

Bad input never crashes a run over 100,000 objects: a file that cannot be used becomes a
``Problem(id, path, reason)`` and the object is skipped and counted. Only a directory that is not
a layout at all, or a catalogue that cannot give labels, raises ``DataError`` (one line).

Non-finite pixels follow the one policy of ``data.nonfinite``: a few are repaired and counted,
an image with more is rejected with a reason.
"""

from __future__ import annotations

import csv
import os
import stat
import warnings
from collections import Counter
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from typing import Any

import numpy as np

from lensfinder.data.nonfinite import MAX_NONFINITE_FRACTION, checked_pixels
from lensfinder.errors import ConfigError, DataError
from lensfinder.labels import LabelRule
from lensfinder.labels import label_rule as parse_label_rule
from lensfinder.layout import (
    CATALOG_COLUMNS,
    CATALOG_NAME,
    KNOWN_MISSING_IDS,
    PUBLIC_DIR,
    STRING_COLUMNS,
    arc_map_path,
    band_dir,
    catalog_path,
    image_path,
    parse_image_name,
)
from lensfinder.stages import progress_bar as progress
from lensfinder.surveys import EUCLID, Band

FITS_BLOCK = 2880  # every FITS file is a whole number of 2880-byte blocks
ID_RANGE = (-(2**63), 2**63 - 1)  # IDs are int64 everywhere (stores, scores, grades)


@dataclass(frozen=True)
class Problem:
    """One skipped input: the object ID (None when unknown), the file, and why."""

    id: int | None
    path: str
    reason: str

    def to_dict(self) -> dict[str, object]:
        return {"id": self.id, "path": self.path, "reason": self.reason}

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> Problem:
        raw_id = data.get("id")
        return cls(None if raw_id is None else int(raw_id), str(data["path"]), str(data["reason"]))

    def __str__(self) -> str:
        who = f"ID {self.id}" if self.id is not None else "-"
        return f"{who}: {self.path}: {self.reason}"


class BadImage(Exception):
    """An object's files cannot be used; the message is the reason shown to the user."""

    def __init__(self, path: Path | str, reason: str) -> None:
        super().__init__(reason)
        self.path = str(path)
        self.reason = reason


@dataclass
class LoadedObject:
    """The pixels of one object, native float32, plus the repairs made to them."""

    vis: np.ndarray  # (200, 200)
    nisp: np.ndarray  # (3, 66, 66), Y J H
    ra: float
    dec: float
    repaired_pixels: int = 0
    repaired_bands: tuple[str, ...] = ()


def reason_kind(reason: str | None) -> str:
    """The kind of a skip reason, for counting: ``"/d/imageEUC_VIS-2.fits: truncated FITS file
    (80 bytes)"`` -> ``"truncated FITS file"`` (the file and the details stay in ``reasons``)."""
    if not reason:
        return "invalid"
    where, sep, what = reason.partition(": ")
    if sep and ("/" in where or "\\" in where or where.endswith(".fits")):
        reason = what
    return reason.split(" (")[0].split(":")[0].strip() or "invalid"


def summarise_problems(problems: list[Problem], limit: int = 3) -> str:
    """ "12 skipped (9 catalogue ID without images, 3 unreadable FITS ...)" for summaries."""
    if not problems:
        return "no problems"
    kinds = Counter(reason_kind(p.reason) for p in problems)
    top = ", ".join(f"{n} {kind}" for kind, n in kinds.most_common(limit))
    more = "" if len(kinds) <= limit else f", {len(kinds) - limit} other kinds"
    return f"{len(problems)} skipped ({top}{more})"


def label_gaps(
    rule: LabelRule, columns: dict[str, np.ndarray], labels: np.ndarray
) -> dict[str, int]:
    """Rows labelled non-lens only because a rule column is empty or non-finite, and per column.

    A row counts when filling its missing values with a huge positive or negative number would
    make it a lens: a galaxy without a source has no ``mag_eff``, but ``n_source_im > 0`` already
    fails, so the gap decides nothing and is not reported.
    """
    missing = np.zeros(len(labels), dtype=bool)
    for values in columns.values():
        missing |= ~np.isfinite(values)
    undecided = np.zeros(len(labels), dtype=bool)
    for fill in (1e300, -1e300):  # finite: the rule treats non-finite values as failing
        filled = {c: np.where(np.isfinite(v), v, fill) for c, v in columns.items()}
        undecided |= missing & (rule.apply(filled) == 1) & (labels != 1)
    if not undecided.any():
        return {}
    per_column = {c: int((~np.isfinite(v) & undecided).sum()) for c, v in columns.items()}
    return {"rows": int(undecided.sum()), **{c: n for c, n in per_column.items() if n}}


def describe_label_gaps(gaps: dict[str, int]) -> str:
    """ "; 3 labelled non-lens for an empty or non-finite rule value (mag_eff: 3)" or ""."""
    if not gaps:
        return ""
    columns = ", ".join(f"{c}: {n}" for c, n in gaps.items() if c != "rows")
    return (
        f"; {gaps.get('rows', 0)} labelled non-lens for an empty or non-finite value in a "
        f"label-rule column ({columns})"
    )


_FILE_KINDS = {
    stat.S_IFDIR: "a directory",
    stat.S_IFIFO: "a FIFO",
    stat.S_IFSOCK: "a socket",
    stat.S_IFCHR: "a character device",
    stat.S_IFBLK: "a block device",
}


def check_regular_file(path: Path) -> None:
    """BadImage unless ``path`` is a regular file (or a link to one): opening a FIFO named like
    a FITS file would wait forever for a writer, and a directory is no image."""
    try:
        mode = os.stat(path).st_mode
    except OSError as exc:
        raise BadImage(path, f"cannot read ({exc.strerror})") from None
    if not stat.S_ISREG(mode):
        kind = _FILE_KINDS.get(stat.S_IFMT(mode), "not a file")
        raise BadImage(path, f"not a regular file ({kind})")


def _read_fits_image(path: Path) -> tuple[np.ndarray, object]:
    """The first image HDU with data, as native float32, and its header; BadImage otherwise."""
    from astropy.io import fits

    check_regular_file(path)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with fits.open(path, memmap=False) as hdul:
                for hdu in hdul:
                    if getattr(hdu, "data", None) is not None and hdu.is_image:
                        data = np.asarray(hdu.data)
                        header = hdu.header
                        break
                else:
                    raise BadImage(path, "FITS file holds no image data")
    except BadImage:
        raise
    except Exception as exc:
        size = path.stat().st_size if path.exists() else 0
        if size == 0:
            raise BadImage(path, "empty file") from None
        with path.open("rb") as handle:
            starts_as_fits = handle.read(9) == b"SIMPLE  ="
        if not starts_as_fits:
            raise BadImage(path, "corrupt FITS: not a FITS file (no SIMPLE card)") from None
        if size % FITS_BLOCK:
            raise BadImage(path, f"truncated FITS file ({size} bytes)") from None
        raise BadImage(path, f"unreadable FITS ({type(exc).__name__}: {exc})") from None
    while data.ndim > 2 and data.shape[0] == 1:  # (1, H, W) cubes from some writers
        data = data[0]
    # Native byte order float32: astropy gives big-endian '>f4', which torch cannot take.
    return data.astype(np.float32, copy=False), header


def read_arc_maps(root: Path, ids: np.ndarray, shape: tuple[int, int]) -> np.ndarray | None:
    """The layout's arc maps (``layout.arc_map_path``) for ``ids``, (n, *shape) uint8, or None
    unless every one of them is there and of that shape (a layout has them for all its objects
    or for none: ``SimulateConfig.arc_maps``)."""
    if len(ids) and not arc_map_path(root, int(ids[0])).is_file():
        return None  # the common case, a layout without them: no read attempted
    maps = np.zeros((len(ids), *shape), np.uint8)
    for row, object_id in enumerate(ids):
        path = arc_map_path(root, int(object_id))
        try:
            data, _ = _read_fits_image(path)
        except BadImage:
            return None
        if data.shape != shape:
            return None
        maps[row] = data > 0
    return maps


def _centre_radec(header, shape: tuple[int, ...]) -> tuple[float, float]:
    """RA/Dec (deg) of the cutout centre from a celestial WCS, or NaN when there is none."""
    if "CTYPE1" not in header or "CTYPE2" not in header:
        return float("nan"), float("nan")
    ctypes = (str(header["CTYPE1"]), str(header["CTYPE2"]))
    centre = ((shape[-1] + 1) / 2.0, (shape[-2] + 1) / 2.0)  # 1-based FITS pixel
    if (
        ctypes[0].startswith("RA--")
        and ctypes[1].startswith("DEC-")
        and (header.get("CRPIX1"), header.get("CRPIX2")) == centre
    ):
        # The reference pixel maps to CRVAL in every projection: no WCS object needed (~1 ms).
        return float(header["CRVAL1"]), float(header["CRVAL2"])
    try:
        from astropy.wcs import WCS

        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            wcs = WCS(header, naxis=2)
            if not wcs.has_celestial:
                return float("nan"), float("nan")
            ra, dec = wcs.pixel_to_world_values((shape[-1] - 1) / 2.0, (shape[-2] - 1) / 2.0)
        return float(ra), float(dec)
    except Exception:  # a broken WCS only loses the position, not the object
        return float("nan"), float("nan")


def read_band(path: Path, band: Band, want_position: bool = False) -> tuple[np.ndarray, int, tuple]:
    """One band's image checked against the survey's cutout shape; (pixels, repaired, (ra, dec))."""
    data, header = _read_fits_image(path)
    expected = (band.cutout_pixels, band.cutout_pixels)
    if data.shape != expected:
        raise BadImage(path, f"wrong shape {data.shape} for band {band.name}, expected {expected}")
    data = np.array(data, dtype=np.float32, copy=True) if not data.flags.writeable else data
    repaired, reason = checked_pixels(data)
    if reason is not None:
        raise BadImage(path, reason)
    position = _centre_radec(header, data.shape) if want_position else (np.nan, np.nan)
    return data, repaired, position


def _parse_number(text: str) -> float:
    text = text.strip()
    return float(text) if text else float("nan")


def id_out_of_range(object_id: int) -> bool:
    """True for an ID that int64 cannot hold (it would wrap to a wrong, negative ID)."""
    return not ID_RANGE[0] <= object_id <= ID_RANGE[1]


def _whole_number(text: str) -> int:
    """The exact integer of an ID field already known to be a whole number (``200003``,
    ``200003.0``, ``2e5``): digits are read as an integer, not through a float, so IDs above
    2**53 keep every digit."""
    try:
        return int(text)
    except ValueError:
        return int(float(text))


def _split_csv(line: str) -> list[str]:
    return next(csv.reader([line]))


def read_catalog(path: Path) -> tuple[dict[str, np.ndarray], list[Problem]]:
    """Columns of a challenge catalogue CSV (``#`` comments, header with an unnamed index).

    Challenge columns (and any other all-number column) are float64 with NaN for empty fields;
    text columns named in ``STRING_COLUMNS`` (``kind``) are string arrays ('' when empty); other
    columns holding text are ignored. A row with the wrong number of fields or a non-number in a
    challenge column is a Problem; a repeated ID keeps its first row. Raises DataError when there
    is no usable header or ID.
    """
    numbered = _catalog_lines(path)
    names = _catalog_header(path, numbered[0][1])
    kept, kept_ids, problems = _catalog_rows(path, numbered[1:], names)
    catalog = _catalog_columns(names, kept)
    catalog["ID"] = np.asarray(kept_ids, dtype=np.int64)
    if not len(catalog["ID"]):
        detail = f" ({len(problems)} unusable rows)" if problems else ""
        raise DataError(f"{path}: catalogue has a header but no usable rows{detail}")
    return catalog, problems


def _catalog_lines(path: Path) -> list[tuple[int, str]]:
    """(line number, line) of the catalogue's lines that hold something: not blank, not a
    ``#`` comment. The first is the header; DataError when there is none."""
    try:
        # utf-8-sig: spreadsheet exports start with a byte-order mark
        text = path.read_text(encoding="utf-8-sig", errors="replace")
    except OSError as exc:
        raise DataError(f"{path}: cannot read catalogue ({exc.strerror})") from None
    numbered = [
        (number, line)
        for number, line in enumerate(text.splitlines(), start=1)
        if line.strip() and not line.lstrip().startswith("#")
    ]
    if not numbered:
        raise DataError(f"{path}: catalogue has no header row")
    return numbered


def _catalog_header(path: Path, header: str) -> list[str]:
    """The column names; DataError without an ID column (no row could be matched to images)."""
    names = [h.strip() for h in _split_csv(header)]
    if "ID" not in names:
        raise DataError(f"{path}: catalogue header has no ID column (found {','.join(names)})")
    return names


def _catalog_rows(
    path: Path, numbered: list[tuple[int, str]], names: list[str]
) -> tuple[list[list[str]], list[int], list[Problem]]:
    """The usable rows (fields as text), their IDs, and a Problem for each row left out."""
    id_column = names.index("ID")
    # Must be numbers (else the row is a Problem): the ID and the challenge's own columns.
    required = [i for i, name in enumerate(names) if name in CATALOG_COLUMNS or i == id_column]
    kept: list[list[str]] = []
    kept_ids: list[int] = []
    problems: list[Problem] = []
    seen: set[int] = set()
    for number, line in numbered:
        where = f"{path}:{number}"
        row = _split_csv(line)
        checked = _catalog_row_id(row, len(names), required, id_column)
        if isinstance(checked, str):
            problems.append(Problem(None, where, checked))
            continue
        if checked in seen:
            problems.append(Problem(checked, where, "duplicate catalogue ID"))
            continue
        seen.add(checked)
        kept.append(row)
        kept_ids.append(checked)
    return kept, kept_ids, problems


def _catalog_row_id(
    row: list[str], n_fields: int, required: list[int], id_column: int
) -> int | str:
    """The row's ID, exact to the last digit, or the reason the row cannot be used."""
    if len(row) != n_fields:
        return f"catalogue row has {len(row)} fields, header has {n_fields}"
    try:
        numbers = {i: _parse_number(row[i]) for i in required}
    except ValueError:
        return "catalogue row holds a non-number"
    object_id = numbers[id_column]
    if not np.isfinite(object_id):
        return "catalogue row has no ID"
    id_text = row[id_column].strip()
    if not float(object_id).is_integer():
        return f"catalogue ID {id_text} is not a whole number"
    whole = _whole_number(id_text)
    if id_out_of_range(whole):
        return f"catalogue ID {id_text} is out of range (IDs must fit in 64-bit integers)"
    return whole


def _catalog_columns(names: list[str], kept: list[list[str]]) -> dict[str, np.ndarray]:
    """The named columns of the kept rows: number columns as float64, ``STRING_COLUMNS`` as
    text; any other text column is left out (the challenge's own were checked row by row)."""
    catalog: dict[str, np.ndarray] = {}
    for column, name in enumerate(names):
        if not name:  # the unnamed leading index is a row number, not a quantity
            continue
        fields = [row[column] for row in kept]
        if name in STRING_COLUMNS:
            catalog[name] = np.array([f.strip() for f in fields], dtype=str)
            continue
        try:
            catalog[name] = np.asarray([_parse_number(f) for f in fields], dtype=np.float64)
        except ValueError:
            continue
    return catalog


def find_layout_root(path: str | Path) -> Path:
    """The layout root for ``path`` (itself, or above its ``Public`` folder); else DataError."""
    path = Path(path)
    if not path.exists():
        raise DataError(f"{path}: no such directory")
    if not path.is_dir():
        raise DataError(f"{path}: not a directory (expected a challenge layout)")
    if path.name == PUBLIC_DIR and (path / EUCLID.bands[0].directory).is_dir():
        path = path.parent
    if not any(band_dir(path, band).is_dir() for band in EUCLID.bands):
        dirs = ", ".join(f"{PUBLIC_DIR}/{b.directory}" for b in EUCLID.bands)
        raise DataError(f"{path}: not a challenge layout (none of {dirs} found)")
    return path


def _list_band(root: Path, band: Band, problems: list[Problem]) -> dict[int, Path]:
    """ID -> file for one band, from one directory listing (fast for 100,000 files); a file
    whose ID int64 cannot hold is added to ``problems`` instead."""
    folder = band_dir(root, band)
    found: dict[int, Path] = {}
    if not folder.is_dir():
        return found
    with os.scandir(folder) as entries:
        for entry in entries:
            parsed = parse_image_name(entry.name)
            if parsed is None or parsed[0] != band.name:
                continue
            if id_out_of_range(parsed[1]):
                reason = "ID out of range (IDs must fit in 64-bit integers)"
                problems.append(Problem(None, entry.path, reason))
                continue
            found[parsed[1]] = Path(entry.path)
    return found


@dataclass
class ChallengeLayout:
    """The usable objects of a layout (sorted by ID), their catalogue rows and labels.

    ``labels`` are -1 when the layout has no catalogue (an unlabelled scan set).
    ``ra``/``dec`` come from the VIS headers and are read on first use (one header per object).
    """

    root: Path
    ids: np.ndarray  # int64
    labels: np.ndarray  # int8
    catalog: dict[str, np.ndarray]
    problems: list[Problem]
    label_rule: str | None
    has_catalog: bool
    label_gaps: dict[str, int] = field(default_factory=dict)  # see ``describe_label_gaps``
    _positions: tuple[np.ndarray, np.ndarray] | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.ids)

    def path(self, index: int, band: Band | str) -> Path:
        band = EUCLID.band(band) if isinstance(band, str) else band
        return image_path(self.root, band, int(self.ids[index]))

    def load(self, index: int, want_position: bool = True) -> LoadedObject:
        """All four bands of object ``index``; raises BadImage with the reason if unusable."""
        planes, repaired, position = [], {}, (np.nan, np.nan)
        for band in EUCLID.bands:
            data, fixed, where = read_band(
                self.path(index, band), band, want_position and band.name == "VIS"
            )
            planes.append(data)
            if fixed:
                repaired[band.name] = fixed
            if band.name == "VIS":
                position = where
        return LoadedObject(
            planes[0],
            np.stack(planes[1:]),
            position[0],
            position[1],
            sum(repaired.values()),
            tuple(repaired),
        )

    def _read_positions(self) -> tuple[np.ndarray, np.ndarray]:
        from astropy.io import fits

        ra = np.full(len(self), np.nan)
        dec = np.full(len(self), np.nan)
        vis = EUCLID.bands[0]
        for index in progress(range(len(self)), total=len(self), desc="reading positions"):
            try:
                check_regular_file(self.path(index, vis))
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    header = fits.getheader(self.path(index, vis))
            except Exception:  # an unreadable file is reported when its pixels are read
                continue
            shape = (header.get("NAXIS2", vis.cutout_pixels), header.get("NAXIS1", 0))
            ra[index], dec[index] = _centre_radec(header, shape)
        return ra, dec

    @property
    def ra(self) -> np.ndarray:
        if self._positions is None:
            self._positions = self._read_positions()
        return self._positions[0]

    @property
    def dec(self) -> np.ndarray:
        if self._positions is None:
            self._positions = self._read_positions()
        return self._positions[1]

    @cached_property
    def index_of(self) -> dict[int, int]:
        return {int(object_id): i for i, object_id in enumerate(self.ids)}

    def summary(self) -> str:
        labelled = (
            f"{int((self.labels == 1).sum())} lenses, {int((self.labels == 0).sum())} non-lenses"
            if self.has_catalog
            else "unlabelled (no catalogue)"
        )
        return (
            f"{self.root}: {len(self)} objects, {labelled}; {summarise_problems(self.problems)}"
            f"{describe_label_gaps(self.label_gaps)}"
        )


def read_layout(
    path: str | Path,
    label_rule: str | LabelRule | None = None,
    catalog: str | Path | None = None,
    keep_unlisted: bool = False,
    use_catalog: bool = True,
) -> ChallengeLayout:
    """List the objects of a challenge layout, read its catalogue, label by ``label_rule``.

    Cheap: lists directories and reads the catalogue; pixels are read later (``load``), so
    unreadable files surface there. Objects missing a band, or missing a catalogue row when a
    catalogue exists, become Problems here; so do catalogue IDs without images.
    ``keep_unlisted`` keeps objects without a catalogue row instead, unlabelled (-1) with NaN
    catalogue values: a survey field is scanned in full, labelled where the catalogue knows.
    ``use_catalog=False`` lists the images only, as if there were no catalogue (an unlabelled
    field for ``train --adapt``: its labels, if any, are never read).
    """
    root = find_layout_root(path)
    rule = _as_rule(label_rule)
    problems: list[Problem] = []
    ids, imaged = _complete_objects(root, problems)
    cat_file = Path(catalog) if catalog is not None else catalog_path(root)
    if not use_catalog or not cat_file.is_file():
        if catalog is not None and use_catalog:
            raise DataError(f"{cat_file}: no such catalogue file")
        return ChallengeLayout(
            root, ids, np.full(len(ids), -1, np.int8), {}, problems, None, has_catalog=False
        )

    columns, cat_problems = read_catalog(cat_file)
    problems += cat_problems
    needed = [c for c in rule.columns if c not in columns]
    if needed:
        raise DataError(
            f"{cat_file}: catalogue lacks column(s) {', '.join(needed)} needed by the label rule "
            f"'{rule}'"
        )
    problems += _ids_without_images(columns["ID"], imaged, cat_file)
    listed = np.isin(ids, columns["ID"])
    if not keep_unlisted:
        problems += _images_without_rows(root, ids[~listed])
        ids, listed = ids[listed], listed[listed]
    aligned = _align_catalog(columns, ids, listed)
    labels = rule.apply(aligned)
    labels[~listed] = -1
    gaps = label_gaps(rule, {c: aligned[c][listed] for c in rule.columns}, labels[listed])
    return ChallengeLayout(
        root, ids, labels, aligned, problems, str(rule), has_catalog=True, label_gaps=gaps
    )


def _complete_objects(root: Path, problems: list[Problem]) -> tuple[np.ndarray, set[int]]:
    """IDs (sorted) of the objects with a file in every band, and the IDs with any image; an
    object missing a band is added to ``problems``. DataError when there are no images."""
    per_band = {band.name: _list_band(root, band, problems) for band in EUCLID.bands}
    imaged: set[int] = set().union(*per_band.values())
    if not imaged:
        raise DataError(f"{root}: challenge layout holds no imageEUC_<BAND>-<ID>.fits files")
    complete = []
    for object_id in sorted(imaged):
        missing = [name for name, files in per_band.items() if object_id not in files]
        if missing:
            present = next(files[object_id] for files in per_band.values() if object_id in files)
            problems.append(Problem(object_id, str(present), f"missing band {','.join(missing)}"))
        else:
            complete.append(object_id)
    return np.asarray(complete, dtype=np.int64), imaged


def _ids_without_images(catalog_ids: np.ndarray, imaged: set[int], cat_file: Path) -> list[Problem]:
    """A Problem for each catalogue row whose object has no image at all."""
    problems = []
    for object_id in catalog_ids:
        if int(object_id) not in imaged:
            known = (
                " (known missing in the challenge set)" if object_id in KNOWN_MISSING_IDS else ""
            )
            problems.append(
                Problem(int(object_id), str(cat_file), f"catalogue ID without images{known}")
            )
    return problems


def _images_without_rows(root: Path, unlisted: np.ndarray) -> list[Problem]:
    """A Problem for each object with images but no catalogue row (dropped: no label)."""
    return [
        Problem(
            int(object_id),
            str(image_path(root, EUCLID.bands[0], int(object_id))),
            "images without a catalogue row",
        )
        for object_id in unlisted
    ]


def _align_catalog(
    columns: dict[str, np.ndarray], ids: np.ndarray, listed: np.ndarray
) -> dict[str, np.ndarray]:
    """The catalogue's columns row for row with ``ids``; an unlisted object (``listed`` False)
    gets NaN in every number column."""
    row_of = {int(object_id): row for row, object_id in enumerate(columns["ID"])}
    rows = np.asarray([row_of.get(int(i), 0) for i in ids], dtype=np.int64)
    aligned = {name: values[rows] for name, values in columns.items()}
    for name, values in aligned.items():
        if name == "ID":
            values[:] = ids
        elif values.dtype.kind == "f":
            values[~listed] = np.nan
    return aligned


def _as_rule(rule: str | LabelRule | None) -> LabelRule:
    if isinstance(rule, LabelRule):
        return rule
    try:
        return parse_label_rule(rule)
    except ValueError as exc:
        raise ConfigError(str(exc)) from None


__all__ = [
    "CATALOG_NAME",
    "MAX_NONFINITE_FRACTION",
    "BadImage",
    "ChallengeLayout",
    "LoadedObject",
    "Problem",
    "read_band",
    "read_catalog",
    "read_layout",
    "summarise_problems",
]
