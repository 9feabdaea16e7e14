"""Pack a challenge layout into one Zarr (v3) directory store, and read it back fast.

Why: 400,000 small FITS files read at ~2,000 files/s; the store reads tens of thousands of
objects/s in contiguous ranges (scanning) and thousands/s at random (training), and carries the
labels, catalogue and problems with the pixels, so nothing downstream re-parses the layout.

Layout of the store (arrays chunked along N only, uncompressed: noise does not compress and
decompression would cost scan time)::

    vis (N,200,200) f4   nisp (N,3,66,66) f4 (Y,J,H)   ids i8   labels i1 (-1 unknown)
    ra, dec f8 (NaN without WCS)   catalog/<column> (one array per catalogue column; f8, or
    variable-length UTF-8 for text columns such as ``kind``)
    attrs: lensfinder_store (format version), survey, bands, nisp_bands, label_rule, source,
           problems, repairs, lensfinder_version, chunk, n_objects, created

Packing writes ``<out>.partial`` and renames it to ``<out>`` only when complete; an interrupted
pack resumes from its last written chunk.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import numpy as np

from lensfinder import __version__
from lensfinder.config import PackConfig
from lensfinder.data.challenge import (
    BadImage,
    ChallengeLayout,
    LoadedObject,
    Problem,
    describe_label_gaps,
    read_arc_maps,
    read_layout,
    summarise_problems,
)
from lensfinder.data.cutouts import (
    NISP_SHAPE,
    VIS_SHAPE,
    Cutouts,
    CutoutSource,
    Indices,
    mark_blank,
)
from lensfinder.errors import DataError
from lensfinder.labels import LabelRule
from lensfinder.safety import STORE, mark_output
from lensfinder.stages import Stage, progress_bar, run_stage
from lensfinder.surveys import EUCLID

STORE_FORMAT_KEY = "lensfinder_store"
STORE_VERSION = 1
VECTOR_CHUNK = 65536  # ids, labels, positions, catalogue columns: a few chunks per 100k objects
PARTIAL_SUFFIX = ".partial"
STORE_KIND = STORE  # the output marker's kind: what ``pack --overwrite`` may replace
PIXEL_ARRAYS = ("vis", "nisp")  # the store's pixel arrays
ARC_ARRAY = "arc"  # the simulator's arc maps, when the layout has them (``_pack_arc_maps``)
FLUSH_OBJECTS = 256  # objects per write (rounded to whole chunks); also the resume granularity


@dataclass
class PackResult:
    out: Path
    n_objects: int
    n_lenses: int
    n_nonlenses: int
    problems: list[Problem]
    repaired_objects: int
    seconds: float
    resumed: bool = False
    already_packed: bool = False
    label_gaps: dict[str, int] = field(default_factory=dict)

    def summary(self) -> str:
        if self.already_packed:
            return f"{self.out}: already packed ({self.n_objects} objects); nothing to do"
        unlabelled = self.n_objects - self.n_lenses - self.n_nonlenses
        labels = f"{self.n_lenses} lenses, {self.n_nonlenses} non-lenses" + (
            f", {unlabelled} unlabelled" if unlabelled else ""
        )
        repaired = (
            f"; {self.repaired_objects} objects had a few NaN/inf pixels replaced"
            if self.repaired_objects
            else ""
        )
        rate = self.n_objects / self.seconds if self.seconds > 0 else float("nan")
        return (
            f"packed {self.n_objects} objects ({labels}) into {self.out} in {self.seconds:.1f} s "
            f"({rate:.0f} objects/s){' (resumed)' if self.resumed else ''}; "
            f"{summarise_problems(self.problems)}{repaired}{describe_label_gaps(self.label_gaps)}"
        )


class PackListing(Protocol):
    """What ``write_store`` packs: objects in a fixed order with labels and catalogue columns.
    A ``ChallengeLayout`` is one; ``data.tiles.TilePlan`` (objects cut from mosaic tiles) is
    another."""

    root: Path
    ids: np.ndarray  # int64, the order objects are written in
    labels: np.ndarray  # int8, -1 where unknown
    catalog: dict[str, np.ndarray]  # column -> values aligned with ``ids``
    problems: list[Problem]  # objects left out before any pixel was read
    label_rule: str | None
    label_gaps: dict[str, int]

    def __len__(self) -> int: ...

    @property
    def index_of(self) -> dict[int, int]: ...

    def path(self, index: int, band: str) -> Path: ...


# ``load(start)``: (position, pixels or why not) for every object from position ``start`` on.
Loader = Callable[[int], Iterable[tuple[int, LoadedObject | Problem]]]


def _listing_digest(layout: ChallengeLayout) -> str:
    """Identifies the object list, so a resumed pack never mixes two different layouts."""
    return hashlib.sha256(layout.ids.tobytes()).hexdigest()[:16]


def _version() -> str:
    return __version__


def vector_chunk(n: int) -> int:
    """Chunk length of the store's 1-D arrays for ``n`` objects: ``VECTOR_CHUNK``, or one chunk
    of ``n`` for a smaller store (uncompressed chunks are written in full: 65,536 float64 are
    512 KB per catalogue column even for 40 objects)."""
    return max(1, min(n, VECTOR_CHUNK))


def _create_arrays(group, n: int, chunk: int) -> None:
    plain = {"compressors": None, "fill_value": 0}
    group.create_array(
        "vis", shape=(n, *VIS_SHAPE), dtype="float32", chunks=(chunk, *VIS_SHAPE), **plain
    )
    group.create_array(
        "nisp", shape=(n, *NISP_SHAPE), dtype="float32", chunks=(chunk, *NISP_SHAPE), **plain
    )
    for name, dtype in (("ids", "int64"), ("ra", "float64"), ("dec", "float64")):
        group.create_array(name, shape=(n,), dtype=dtype, chunks=(vector_chunk(n),), **plain)


def _load_or_problem(layout: ChallengeLayout, index: int) -> LoadedObject | Problem:
    try:
        return layout.load(index)
    except BadImage as exc:
        return Problem(int(layout.ids[index]), exc.path, exc.reason)


def _loaded_in_order(
    layout: ChallengeLayout, start: int, workers: int
) -> Iterator[tuple[int, LoadedObject | Problem]]:
    """(listing position, object or problem) from ``start`` on, reading ``workers`` at once."""
    positions = range(start, len(layout))
    if workers <= 1:
        for index in positions:
            yield index, _load_or_problem(layout, index)
        return
    with ThreadPoolExecutor(workers) as pool:
        window = 4 * workers  # bounded look-ahead keeps memory flat on 100k objects
        for lo in range(start, len(layout), window):
            batch = range(lo, min(lo + window, len(layout)))
            yield from zip(
                batch, pool.map(lambda i: _load_or_problem(layout, i), batch), strict=True
            )


@dataclass
class _Buffer:
    """Objects read but not yet written; flushed as whole chunks so writes never overlap."""

    vis: list[np.ndarray] = field(default_factory=list)
    nisp: list[np.ndarray] = field(default_factory=list)
    ids: list[int] = field(default_factory=list)
    ra: list[float] = field(default_factory=list)
    dec: list[float] = field(default_factory=list)

    def add(self, object_id: int, obj: LoadedObject) -> None:
        self.vis.append(obj.vis)
        self.nisp.append(obj.nisp)
        self.ids.append(object_id)
        self.ra.append(obj.ra)
        self.dec.append(obj.dec)

    def __len__(self) -> int:
        return len(self.ids)

    def write(self, group, at: int) -> tuple[int, str]:
        """Write at ``at``; returns the end and a digest of what was written (for the store's
        content hash, built at pack time so nothing re-reads the pixels later)."""
        stop = at + len(self)
        vis, nisp = np.stack(self.vis), np.stack(self.nisp)
        ids = np.asarray(self.ids, dtype=np.int64)
        digest = hashlib.sha256(vis.tobytes())
        digest.update(nisp.tobytes())
        digest.update(ids.tobytes())
        group["vis"][at:stop] = vis
        group["nisp"][at:stop] = nisp
        group["ids"][at:stop] = ids
        group["ra"][at:stop] = np.asarray(self.ra, dtype=np.float64)
        group["dec"][at:stop] = np.asarray(self.dec, dtype=np.float64)
        for items in (self.vis, self.nisp, self.ids, self.ra, self.dec):
            items.clear()
        return stop, digest.hexdigest()[:16]


def _finish(group, layout: PackListing, written: int) -> np.ndarray:
    """Trim the arrays to what was written; add labels and catalogue columns by ID.

    Overwrites labels/catalogue left by a run that died between this step and the rename.
    """
    for name in ("vis", "nisp", "ids", "ra", "dec"):
        array = group[name]
        array.resize((written, *array.shape[1:]))
    rows = np.asarray([layout.index_of[int(i)] for i in group["ids"][:]], dtype=np.int64)
    labels = layout.labels[rows].astype(np.int8)
    vector = {"chunks": (vector_chunk(written),), "compressors": None, "overwrite": True}
    group.create_array("labels", shape=(written,), dtype="int8", **vector)[:] = labels
    catalog = group.create_group("catalog", overwrite=True)
    for name, values in layout.catalog.items():
        column = values[rows]
        # Text (an object's kind) as Zarr's variable-length UTF-8 strings.
        dtype = str if column.dtype.kind == "U" else column.dtype
        catalog.create_array(name, shape=column.shape, dtype=dtype, **vector)[:] = column
    _pack_arc_maps(group, layout.root, group["ids"][:])
    return labels


def _pack_arc_maps(group, root: Path, ids: np.ndarray) -> None:
    """The simulator's arc maps (``SimulateConfig.arc_maps``) as ``arc`` (N, 200, 200) uint8,
    compressed (mostly zeros: ~1% of a float VIS array), when the layout has one per object;
    read and written a chunk at a time."""
    if ARC_ARRAY in group:
        del group[ARC_ARRAY]
    step = max(1, min(len(ids), FLUSH_OBJECTS))
    for lo in range(0, len(ids), step):
        maps = read_arc_maps(Path(root), ids[lo : lo + step], VIS_SHAPE)
        if maps is None:  # none, or not one per object after all: none
            if ARC_ARRAY in group:
                del group[ARC_ARRAY]
            return
        if lo == 0:
            group.create_array(
                ARC_ARRAY, shape=(len(ids), *VIS_SHAPE), dtype="uint8",
                chunks=(step, *VIS_SHAPE), fill_value=0,
            )  # fmt: skip
        group[ARC_ARRAY][lo : lo + len(maps)] = maps


def _resume_or_start(partial: Path, identity: dict, n: int, chunk: int) -> tuple[Any, dict]:
    """The partial store to continue (same layout, rule and chunk) and its saved state, or a
    fresh one; an unusable leftover is removed."""
    import zarr

    if partial.exists():
        try:
            group = zarr.open_group(partial, mode="r+")
            state = dict(group.attrs)
            if all(state.get(k) == v for k, v in identity.items()) and "cursor" in state:
                return group, state
        except Exception:  # an unreadable leftover is simply rebuilt
            pass
        shutil.rmtree(partial)
    group = zarr.open_group(partial, mode="w")
    _create_arrays(group, n, chunk)
    state = {**identity, "cursor": 0, "written": 0, "problems": [], "repairs": [], "digests": []}
    group.attrs.update(state)
    return group, state


def pack(
    layout_dir: str | Path,
    out: str | Path,
    label_rule: str | LabelRule | None = None,
    chunk: int = PackConfig.chunk,
    progress: bool = True,
    workers: int = PackConfig.workers,
    overwrite: bool = False,
) -> PackResult:
    """Read every object of a layout once and write one Zarr store; resumable and atomic.

    Unreadable objects are skipped and listed in the store's ``problems`` attribute. An
    existing complete store from the same layout and rule is left as it is. The store goes only
    where the output rule allows (not inside the layout, not inside another output);
    ``overwrite`` replaces only a store lensfinder packed that holds nothing else.
    """
    if chunk < 1:
        raise DataError(f"pack: chunk must be at least 1 object, got {chunk}")
    if workers < 1:
        raise DataError(f"pack: workers must be at least 1, got {workers}")
    with run_stage(
        "pack",
        STORE_KIND,
        out,
        [layout_dir],
        progress=progress,
        overwrite=overwrite,
        staged=True,
        owns=_zarr_entry,
    ) as stage:
        return stage.finish(_pack_locked(layout_dir, label_rule, chunk, workers, stage))


def _zarr_entry(entry: Path) -> bool:
    """Whether a store's top-level entry is Zarr's (its metadata, or an array or group)."""
    return entry.name == "zarr.json" or (entry / "zarr.json").is_file()


def _pack_locked(
    layout_dir: str | Path,
    label_rule: str | LabelRule | None,
    chunk: int,
    workers: int,
    stage: Stage,
) -> PackResult:
    """``pack`` once it holds the lock beside ``stage.out``."""
    layout = read_layout(layout_dir, label_rule=label_rule)
    identity = {
        "source": str(layout.root.resolve()),
        "label_rule": layout.label_rule,
        "listing": _listing_digest(layout),
        "chunk": chunk,
    }
    return write_store(
        layout, identity, chunk, lambda start: _loaded_in_order(layout, start, workers), stage
    )


def write_store(
    listing: PackListing, identity: dict, chunk: int, load: Loader, stage: Stage
) -> PackResult:
    """The store of ``listing`` at ``stage.out`` (whose lock the stage holds, as ``pack`` does
    with ``staged=True``): an existing complete store of the same ``identity`` is kept as it
    is, a ``<out>.partial`` of the same identity is resumed, anything else is refused.
    ``identity`` names what is packed (source, object list, rule, chunk)."""
    out = stage.out
    if out.exists():
        existing = open_store(out)  # raises a clear DataError if it is something else
        if all(existing.attrs.get(k) == v for k, v in identity.items()):
            return PackResult(
                out,
                len(existing),
                int((existing.labels == 1).sum()),
                int((existing.labels == 0).sum()),
                existing.problems,
                0,
                stage.seconds,
                already_packed=True,
            )
        raise DataError(
            f"{out}: already exists, packed from another layout or with another label rule "
            "or chunk; remove it, choose another output, or pass --overwrite"
        )
    return _pack_into(listing, identity, chunk, load, stage)


@dataclass
class _Packing:
    """How far a pack has gone: the store's resume record (its attributes while packing)."""

    cursor: int  # layout objects read
    written: int  # objects in the store
    problems: list[Problem]  # objects that could not be read
    repairs: list[Problem]  # non-finite pixels replaced
    digests: list[str]  # one per write, for the content hash
    resumed: bool

    @classmethod
    def of(cls, state: dict[str, Any]) -> _Packing:
        return cls(
            state["cursor"],
            state["written"],
            [Problem.from_dict(p) for p in state["problems"]],
            [Problem.from_dict(p) for p in state["repairs"]],
            list(state.get("digests", [])),
            resumed=state["cursor"] > 0,
        )

    def attrs(self) -> dict[str, Any]:
        return {
            "cursor": self.cursor,
            "written": self.written,
            "problems": [p.to_dict() for p in self.problems],
            "repairs": [p.to_dict() for p in self.repairs],
            "digests": self.digests,
        }


def _pack_into(
    layout: PackListing, identity: dict, chunk: int, load: Loader, stage: Stage
) -> PackResult:
    """Write ``<out>.partial`` (resuming a matching one) and rename it to ``out`` when done."""
    out = stage.out
    partial = out.with_name(out.name + PARTIAL_SUFFIX)
    group, state = _resume_or_start(partial, identity, len(layout), chunk)
    packing = _Packing.of(state)
    _copy_objects(layout, group, packing, chunk, load, stage.progress)
    problems = list(layout.problems) + packing.problems
    if packing.written == 0:
        shutil.rmtree(partial)
        raise DataError(f"{layout.root}: no usable objects; {summarise_problems(problems)}")
    labels = _seal(group, layout, packing, problems)
    mark_output(partial, STORE_KIND)
    partial.rename(out)
    return PackResult(
        out,
        packing.written,
        int((labels == 1).sum()),
        int((labels == 0).sum()),
        problems,
        len(packing.repairs),
        stage.seconds,
        resumed=packing.resumed,
        label_gaps=layout.label_gaps,
    )


def _copy_objects(
    layout: PackListing,
    group: Any,
    packing: _Packing,
    chunk: int,
    load: Loader,
    progress: bool,
) -> None:
    """Read the layout's objects from ``packing.cursor`` on and write them in whole chunks,
    recording how far it got after each write (a killed pack resumes there)."""
    flush_every = chunk * max(1, FLUSH_OBJECTS // chunk)
    buffer = _Buffer()
    start = packing.cursor
    loaded: Iterable[tuple[int, LoadedObject | Problem]] = load(start)
    if progress:
        loaded = progress_bar(loaded, total=len(layout), initial=start, desc="packing")
    for last, item in loaded:
        if isinstance(item, Problem):
            packing.problems.append(item)
        else:
            buffer.add(int(layout.ids[last]), item)
            if item.repaired_pixels:
                bands = ",".join(item.repaired_bands)
                where = str(layout.path(last, item.repaired_bands[0]))
                reason = f"replaced {item.repaired_pixels} NaN/inf pixels in {bands}"
                packing.repairs.append(Problem(int(layout.ids[last]), where, reason))
        if len(buffer) >= flush_every:
            packing.written, digest = buffer.write(group, packing.written)
            packing.digests.append(digest)
            packing.cursor = last + 1
            group.attrs.update(packing.attrs())
    if len(buffer):
        packing.written, digest = buffer.write(group, packing.written)
        packing.digests.append(digest)


def _seal(
    group: Any, layout: PackListing, packing: _Packing, problems: list[Problem]
) -> np.ndarray:
    """Trim and label the written store and record what it is (``_finish``, then the store's
    attributes with its content hash); returns the labels."""
    labels = _finish(group, layout, packing.written)
    content = hashlib.sha256("".join(packing.digests).encode())
    content.update(labels.tobytes())
    packing.cursor = len(layout)
    group.attrs.update(
        {
            STORE_FORMAT_KEY: STORE_VERSION,
            "survey": EUCLID.name,
            "bands": list(EUCLID.band_names),
            "nisp_bands": list(EUCLID.band_names[1:]),
            "pixel_scales": {b.name: b.pixel_scale for b in EUCLID.bands},
            **packing.attrs(),
            "problems": [p.to_dict() for p in problems],
            "label_gaps": layout.label_gaps,
            "n_objects": packing.written,
            "catalog_columns": list(layout.catalog),
            "lensfinder_version": _version(),
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "content_hash": content.hexdigest()[:16],
        }
    )
    return labels


class _RawChunks:
    """Rows of a store array read straight from its chunk files into the output array.

    Only for arrays as ``pack`` writes them: Zarr v3, uncompressed little-endian float32 in C
    order, chunked along N only, in a local directory (``of`` checks; anything else is read
    through Zarr). Zarr's asynchronous pipeline costs more CPU than the reading itself with
    8-object chunks (measured: ~0.2 ms per cutout of each scan worker's CPU, ~6% of a scan);
    a missing chunk file reads as the fill value, as in Zarr (``read`` marks such rows), and a
    file of the wrong size is an error, as in Zarr.
    """

    def __init__(self, array: Any, directory: Path) -> None:
        self.array = array
        self.directory = directory
        self.chunk = int(array.chunks[0])
        self.row_shape = tuple(int(v) for v in array.shape[1:])
        self.row_bytes = 4 * int(np.prod(self.row_shape))

    @classmethod
    def of(cls, array: Any, directory: Path) -> _RawChunks | None:
        """The raw reader of ``array`` (stored in ``directory``), or None if it is not plain."""
        from zarr.codecs import BytesCodec
        from zarr.storage import LocalStore

        serializer = getattr(array, "serializer", None)
        plain = (
            array.metadata.zarr_format == 3
            and isinstance(array.store, LocalStore)
            and directory.is_dir()
            and not array.compressors
            and not array.filters
            and isinstance(serializer, BytesCodec)
            and serializer.endian is not None
            and serializer.endian.value == "little"
            and array.dtype == np.dtype("float32")
            and array.order == "C"
            and tuple(array.chunks[1:]) == tuple(array.shape[1:])
        )
        return cls(array, directory) if plain else None

    def read(self, lo: int, hi: int) -> np.ndarray:
        """Rows ``lo`` to ``hi`` (exclusive)."""
        out = np.empty((hi - lo, *self.row_shape), dtype=np.float32)
        tail = (0,) * len(self.row_shape)
        for number in range(lo // self.chunk, (hi - 1) // self.chunk + 1):
            first = number * self.chunk
            a, b = max(lo, first), min(hi, first + self.chunk)
            path = self.directory / self.array.metadata.encode_chunk_key((number, *tail))
            try:
                with open(path, "rb", buffering=0) as file:
                    size = os.fstat(file.fileno()).st_size
                    if size != self.chunk * self.row_bytes:
                        raise DataError(
                            f"{path}: store chunk of {size} bytes, expected "
                            f"{self.chunk * self.row_bytes}"
                        )
                    file.seek((a - first) * self.row_bytes)
                    got = file.readinto(out[a - lo : b - lo].data.cast("B"))
            except FileNotFoundError:
                out[a - lo : b - lo] = self.array.metadata.fill_value
                continue
            if got != (b - a) * self.row_bytes:
                raise DataError(f"{path}: short read ({got} of {(b - a) * self.row_bytes} bytes)")
        return out


class StoreSource(CutoutSource):
    """A packed store. Arrays open lazily, so the object pickles cheaply to worker processes."""

    # A store read costs little per call, but its fresh arrays do per page: one chunk (13 MB
    # at batch 64) comes from malloc's reused heap, four (54 MB) from new mappings whose page
    # faults cost 0.02 ms per cutout (measured: read 0.051 -> 0.028 ms per cutout).
    read_chunks = 1

    def __init__(
        self,
        path: Path,
        attrs: dict,
        ids: np.ndarray,
        labels: np.ndarray,
        ra: np.ndarray,
        dec: np.ndarray,
    ) -> None:
        self.path = path
        self.attrs = attrs
        self.ids = ids
        self.labels = labels
        self._ra, self._dec = ra, dec
        self.problems = [Problem.from_dict(p) for p in attrs.get("problems", [])]
        self.label_rule = attrs.get("label_rule")
        self._arrays: dict | None = None
        self._raw: dict[str, _RawChunks | None] = {}
        self._catalog: dict[str, np.ndarray] | None = None
        self._memory: tuple[np.ndarray, np.ndarray] | None = None

    def __getstate__(self) -> dict:
        return {**self.__dict__, "_arrays": None, "_raw": {}}

    @property
    def ra(self) -> np.ndarray:
        return self._ra

    @property
    def dec(self) -> np.ndarray:
        return self._dec

    @property
    def location(self) -> Path:
        """The store's absolute path, as skip reasons name it: a reason's kind is what follows
        its file (``reason_kind``), which a bare relative name like ``st.zarr`` cannot show."""
        return self.path.absolute()

    @property
    def chunk(self) -> int:
        return int(self.attrs.get("chunk", PackConfig.chunk))

    def _open(self) -> dict:
        if self._arrays is None:
            import zarr

            group = zarr.open_group(self.path, mode="r")
            self._arrays = {"vis": group["vis"], "nisp": group["nisp"], "group": group}
            self._raw = {
                name: _RawChunks.of(self._arrays[name], self.path / name) for name in PIXEL_ARRAYS
            }
        return self._arrays

    @property
    def catalog(self) -> dict[str, np.ndarray]:
        if self._catalog is None:
            group = self._open()["group"]
            names = self.attrs.get("catalog_columns", [])
            self._catalog = {name: _as_numpy(group["catalog"][name][:]) for name in names}
        return self._catalog

    def to_memory(self) -> StoreSource:
        """Load all pixels into RAM (a 10,000-object store is ~2 GB) for fast random reads.

        Read through ``read``, block by block: a damaged chunk leaves zeros in its rows (which
        ``check`` refuses) instead of failing the whole load."""
        n = len(self)
        vis = np.empty((n, *VIS_SHAPE), np.float32)
        nisp = np.empty((n, *NISP_SHAPE), np.float32)
        step = self.chunk * max(1, FLUSH_OBJECTS // self.chunk)
        for lo in range(0, n, step):
            cutouts = self.read(range(lo, min(n, lo + step)))
            vis[lo : lo + len(cutouts)], nisp[lo : lo + len(cutouts)] = cutouts.vis, cutouts.nisp
        self._memory = (vis, nisp)
        return self

    def arc_maps(self, indices: Indices) -> np.ndarray | None:
        """The packed arc maps of these objects (``SimulateConfig.arc_maps``), or None."""
        group = self._open()["group"]
        if ARC_ARRAY not in group:
            return None
        positions = self._as_indices(indices)
        unique, inverse = np.unique(positions, return_inverse=True)
        return np.asarray(group[ARC_ARRAY].oindex[unique], dtype=np.uint8)[inverse]

    def content_fingerprint(self) -> str:
        """The content hash recorded at pack time (older stores: their creation time and IDs)."""
        if self.attrs.get("content_hash"):
            return str(self.attrs["content_hash"])
        digest = hashlib.sha256(str(self.attrs.get("created")).encode())
        digest.update(np.ascontiguousarray(self.ids, dtype="<i8").tobytes())
        return digest.hexdigest()[:16]

    def _chunk_problems(self, positions: np.ndarray) -> dict[int, str]:
        """Chunk number -> why it cannot be read, for chunks whose file is gone (Zarr would
        silently return zeros for them)."""
        arrays = self._open()
        problems: dict[int, str] = {}
        for number in np.unique(positions // self.chunk).tolist():
            for name in ("vis", "nisp"):
                array = arrays[name]
                key = array.metadata.encode_chunk_key((number,) + (0,) * (array.ndim - 1))
                if not (self.path / name / key).is_file():
                    problems[number] = f"{self.location / name / key}: missing store chunk"
                    break
        return problems

    def _read_rows(self, positions: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        if self._memory is not None:
            return self._memory[0][positions], self._memory[1][positions]
        arrays = self._open()
        steps = np.diff(positions)
        lo, hi = int(positions.min()), int(positions.max()) + 1
        if len(positions) > 1 and (steps > 0).all() and hi - lo <= 2 * len(positions):
            # Increasing and dense (a split of the store read in order): one contiguous read
            # of the span beats Zarr's per-chunk selection.
            vis, nisp = (
                raw.read(lo, hi) if (raw := self._raw[name]) else arrays[name][lo:hi]
                for name in PIXEL_ARRAYS
            )
            if hi - lo == len(positions):
                return vis, nisp
            return vis[positions - lo], nisp[positions - lo]
        unique, inverse = np.unique(positions, return_inverse=True)
        return arrays["vis"].oindex[unique][inverse], arrays["nisp"].oindex[unique][inverse]

    def read(self, indices: Indices) -> Cutouts:
        """Contiguous ranges read as slices (whole chunks); other sets read chunk by chunk.

        Rows in a chunk whose file is missing or unreadable come back invalid with the reason,
        and so do blank (constant) images: a damaged store is counted, never scored as zeros.
        """
        positions = self._as_indices(indices)
        n = len(positions)
        if n == 0:
            return Cutouts.empty(0)
        bad = {} if self._memory is not None else self._chunk_problems(positions)
        try:
            vis, nisp = self._read_rows(positions)
        except Exception:  # a truncated or corrupt chunk: read chunk by chunk to find it
            out = Cutouts.empty(n)
            for number in np.unique(positions // self.chunk).tolist():
                rows = np.flatnonzero(positions // self.chunk == number)
                if number in bad:
                    continue
                try:
                    out.vis[rows], out.nisp[rows] = self._read_rows(positions[rows])
                except Exception as exc:
                    bad[number] = (
                        f"{self.location}: unreadable store chunk (chunk {number}, "
                        f"{type(exc).__name__}: {exc})"
                    )
            vis, nisp = out.vis, out.nisp
        result = Cutouts(
            np.ascontiguousarray(vis, dtype=np.float32),
            np.ascontiguousarray(nisp, dtype=np.float32),
            np.ones(n, dtype=bool),
            [None] * n,
        )
        for row, number in enumerate((positions // self.chunk).tolist()):
            if number in bad:
                result.valid[row], result.reasons[row] = False, bad[number]
        mark_blank(result, self.location)
        return result


def _as_numpy(values: np.ndarray) -> np.ndarray:
    """A catalogue column as the layout reader gives it: text as a plain ``<U`` array."""
    if values.dtype.kind == "T":  # numpy's variable-width StringDType, from Zarr's strings
        return np.array(values.tolist(), dtype=str)
    return values


def open_store(path: str | Path) -> StoreSource:
    """Open a store written by ``pack``; DataError for anything else or an unfinished pack."""
    import zarr

    path = Path(path)
    if not path.is_dir():
        raise DataError(f"{path}: no such store directory")
    if path.name.endswith(PARTIAL_SUFFIX):
        raise DataError(f"{path}: an unfinished pack; run pack again to finish it")
    if not (path / "zarr.json").is_file():
        raise DataError(f"{path}: not a lensfinder store (no zarr.json)")
    try:
        group = zarr.open_group(path, mode="r")
        attrs = dict(group.attrs)
    except Exception as exc:
        raise DataError(
            f"{path}: not a readable Zarr store ({type(exc).__name__}: {exc})"
        ) from None
    version = attrs.get(STORE_FORMAT_KEY)
    if version is None:
        raise DataError(f"{path}: a Zarr store, but not one written by lensfinder pack")
    if int(version) > STORE_VERSION:
        raise DataError(
            f"{path}: store format {version} is newer than this lensfinder reads "
            f"({STORE_VERSION}); upgrade lensfinder"
        )
    try:
        ids = group["ids"][:]
        labels = group["labels"][:]
        ra, dec = group["ra"][:], group["dec"][:]
        shapes = group["vis"].shape[1:], group["nisp"].shape[1:]
    except KeyError as exc:
        raise DataError(f"{path}: store lacks array {exc}") from None
    if shapes != (VIS_SHAPE, NISP_SHAPE):
        raise DataError(
            f"{path}: store holds images of shape {shapes}, expected {(VIS_SHAPE, NISP_SHAPE)}"
        )
    return StoreSource(path, attrs, ids.astype(np.int64), labels.astype(np.int8), ra, dec)
