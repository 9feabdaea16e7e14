"""Objects/s reading all four bands: per-file FITS (astropy) against the packed Zarr store.

    .venv/bin/python benchmarks/bench_store_read.py --n 1024

Builds a layout with the test-support generator (``lensfinder.testing``), packs it, then times:
raw astropy reads (4 files per object), ``open_source(layout).read`` (the same plus checks),
store reads of contiguous ranges (how scans read) and of random batches (how training reads).
Files were just written, so all numbers are warm-cache; a cold disk favours the store more.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import common
import numpy as np


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--n", type=int, default=1024, help="objects in the layout")
    parser.add_argument("--chunk", type=int, default=None, help="store chunk (default: pack's)")
    parser.add_argument("--batch", type=int, default=256, help="contiguous read size")
    parser.add_argument("--random-batch", type=int, default=128, help="random batch size")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--workdir", type=Path, default=None, help="default: a temporary dir")
    common.add_json_argument(parser)
    args = parser.parse_args(argv)
    common.quiet()

    from astropy.io import fits

    from lensfinder.data import open_source
    from lensfinder.data.store import pack
    from lensfinder.layout import image_path
    from lensfinder.surveys import EUCLID
    from lensfinder.testing import make_tiny_layout

    workdir = args.workdir or Path(tempfile.mkdtemp(prefix="bench_store_"))
    layout_dir = workdir / "layout"
    store_dir = workdir / f"store-chunk{args.chunk or 'default'}.zarr"
    started = time.perf_counter()
    if not layout_dir.exists():
        make_tiny_layout(layout_dir, n=args.n, seed=0)
    print(f"layout: {args.n} objects in {time.perf_counter() - started:.1f} s ({layout_dir})")
    chunk = {} if args.chunk is None else {"chunk": args.chunk}
    result = pack(layout_dir, store_dir, progress=False, **chunk)
    print(result.summary())

    layout = open_source(layout_dir)
    store = open_source(store_dir)
    n = len(store)
    ids = layout.ids.tolist()

    def raw_fits() -> float:
        t = time.perf_counter()
        for object_id in ids:
            for band in EUCLID.bands:
                with fits.open(image_path(layout_dir, band, object_id), memmap=False) as hdul:
                    np.asarray(hdul[0].data, dtype=np.float32)
        return time.perf_counter() - t

    def layout_read() -> float:
        t = time.perf_counter()
        for lo in range(0, n, args.batch):
            layout.read(range(lo, min(lo + args.batch, n)))
        return time.perf_counter() - t

    def store_contiguous() -> float:
        t = time.perf_counter()
        for lo in range(0, n, args.batch):
            store.read(range(lo, min(lo + args.batch, n)))
        return time.perf_counter() - t

    rng = np.random.default_rng(0)
    batches = max(1, n // args.random_batch)

    def store_random() -> float:
        picks = [rng.choice(n, args.random_batch, replace=False) for _ in range(batches)]
        t = time.perf_counter()
        for pick in picks:
            store.read(pick)
        return time.perf_counter() - t

    rates = {
        "FITS, astropy (4 files/object)": common.rate(n, common.best_of(args.repeats, raw_fits)),
        "FITS via open_source(layout).read": common.rate(
            n, common.best_of(args.repeats, layout_read)
        ),
        f"store, contiguous reads of {args.batch}": common.rate(
            n, common.best_of(args.repeats, store_contiguous)
        ),
        f"store, random batches of {args.random_batch}": common.rate(
            batches * args.random_batch, common.best_of(args.repeats, store_random)
        ),
    }
    machine = common.print_machine()
    print(f"chunk {store.chunk} objects; best of {args.repeats}; warm page cache")
    base = rates["FITS, astropy (4 files/object)"]
    for name, rate in rates.items():
        print(f"  {name:40s} {rate:10.0f} objects/s   x{rate / base:6.1f}")
    figures = [
        common.figure(
            f"read 4 bands: {name}", rate, "objects/s", ratio_to_fits=round(rate / base, 2)
        )
        for name, rate in rates.items()
    ]
    details = {"n": n, "chunk": store.chunk, "repeats": args.repeats, "rates": rates}
    common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
