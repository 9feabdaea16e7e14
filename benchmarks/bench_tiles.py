"""Survey tiles end to end: a simulated MER tile scanned through a store and straight from it.

1. ``simulate-tile`` renders one tile (``--size``, lens fraction ``--lens-fraction``) with its
   catalogue and truth (resumable: a re-run with the same ``--workdir`` reuses it).
2. (a) ``cutouts`` -> store -> ``scan`` and (b) ``scan --tiles`` with ``--model`` on
   ``--workers`` Dask workers: objects/s of each step and of each path, and the largest score
   difference between the two catalogues (the same objects, the same scores expected).
3. Completeness: the planted lenses (truth.csv, catalogued) among the top K candidates, K
   also given per million catalogued objects.
4. Where a tile scan's time goes, on one core: cutting (``TileSource.read``) against inference
   (``Predictor.predict_arrays`` on the same cutouts), ms per object.
5. Memory: a full-size (``--full-size``, 19,200^2) tile is written as sparse FITS files (the
   WCS and a noise patch at each of ``--memory-objects`` catalogue positions, zeros elsewhere,
   no rendering), and a fresh process cuts those objects in reads of a scan shard's size
   while its peak RSS is recorded, against the same for the small tile: memory follows the
   objects per read, not the tile size.

    .venv/bin/python benchmarks/bench_tiles.py --workdir /tmp/bench-tiles \
        --model /work/bench/runs/new-cpu-best --json /tmp/bench-tiles.json
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import common
import numpy as np

READ_ROWS = 256  # objects a scan shard reads at once (TileSource.read_chunks at batch 64)


def _arguments(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--workdir", type=Path, default=None, help="kept: a re-run reuses it")
    parser.add_argument(
        "--model",
        type=Path,
        action="append",
        default=None,
        help="trained run (repeat for an ensemble); default: an untrained "
        "cpu-small model (speed only: completeness means nothing)",
    )
    parser.add_argument("--size", type=int, default=4096, help="simulated tile side, pixels")
    parser.add_argument("--lens-fraction", type=float, default=1e-2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--share-objects", type=int, default=384, help="objects timed in step 4")
    parser.add_argument("--full-size", type=int, default=19200)
    parser.add_argument("--memory-objects", type=int, default=300)
    parser.add_argument(
        "--memory-child", nargs=3, metavar=("TILES", "CATALOG", "JSON"), help=argparse.SUPPRESS
    )
    common.add_json_argument(parser)
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------- the tile
def simulate(workdir: Path, args: argparse.Namespace) -> tuple[Path, Path, Path, dict]:
    from lensfinder.config import TileSimulateConfig
    from lensfinder.simulate.tile import simulate_tile

    config = TileSimulateConfig(
        size=args.size, lens_fraction=args.lens_fraction, seed=args.seed, workers=args.workers
    )
    with common.Stopwatch() as watch:
        result = simulate_tile(config, workdir / "tile", progress=False)
    print(result.summary())
    return (
        result.out,
        result.catalog,
        result.truth,
        {
            "size": args.size,
            "objects": result.n_objects,
            "catalogued": result.n_catalogued,
            "lenses": result.n_lenses,
            "simulate_s": round(watch.seconds, 1),
        },
    )


def model_runs(workdir: Path, args: argparse.Namespace) -> tuple[list[Path], bool]:
    if args.model:
        return [m.resolve() for m in args.model], True
    return [common.untrained_run(workdir / "untrained-cpu-small")], False


# ----------------------------------------------------------------------------- the two paths
def _fresh(path: Path) -> Path:
    if path.exists():
        shutil.rmtree(path)
    return path


def both_paths(workdir: Path, tiles: Path, catalog: Path, models: list[Path], workers: int):
    """(a) cutouts -> store -> scan and (b) scan --tiles, timed; their catalogues compared."""
    import pyarrow.parquet as pq

    from lensfinder.config import CutoutsConfig, ScanConfig
    from lensfinder.data.tiles import cutouts
    from lensfinder.scan import scan

    cfg = ScanConfig(workers=workers)
    store = _fresh(workdir / "store.zarr")
    with common.Stopwatch() as cut_watch:
        packed = cutouts(tiles, catalog, store, CutoutsConfig(workers=workers), progress=False)
    with common.Stopwatch() as store_watch:
        via_store = scan(models, store, _fresh(workdir / "scan-store"), cfg, progress=False)
    with common.Stopwatch() as tile_watch:
        direct = scan(
            models, tiles, _fresh(workdir / "scan-tiles"), cfg, progress=False, catalog=catalog
        )
    print(packed.summary(), via_store.summary(), direct.summary(), sep="\n")
    a = pq.read_table(workdir / "scan-store" / "candidates.parquet", columns=["id", "score"])
    b = pq.read_table(workdir / "scan-tiles" / "candidates.parquet", columns=["id", "score"])
    same_ids = a["id"].to_pylist() == b["id"].to_pylist()
    n = direct.n_scored + sum(direct.skipped.values())  # objects the tile scan went through
    return {
        "objects_planned": direct.n_objects,
        "objects_scored": direct.n_scored,
        "not_cut": direct.source_problems,
        "skipped_on_cutting": direct.skipped,
        "cutouts_s": round(cut_watch.seconds, 2),
        "cutouts_objects_per_s": round(common.rate(packed.n_objects, cut_watch.seconds), 1),
        "store_scan_s": round(store_watch.seconds, 2),
        "store_scan_objects_per_s": round(common.rate(via_store.n_scored, store_watch.seconds), 1),
        "store_scan_steady_per_s": round(via_store.steady_rate, 1),
        "store_path_objects_per_s": round(
            common.rate(via_store.n_scored, cut_watch.seconds + store_watch.seconds), 1
        ),
        "tile_scan_s": round(tile_watch.seconds, 2),
        "tile_scan_objects_per_s": round(common.rate(n, tile_watch.seconds), 1),
        "tile_scan_steady_per_s": round(direct.steady_rate, 1),
        "same_ids": same_ids,
        "max_score_difference": float(np.max(np.abs(np.asarray(a["score"]) - b["score"])))
        if same_ids and a.num_rows
        else None,
    }


# ----------------------------------------------------------------------------- completeness
def completeness(scan_dir: Path, truth: Path, n_catalogued: int) -> list[dict[str, Any]]:
    """Planted, catalogued lenses among the top K candidates, for K in steps up to all."""
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    table = pacsv.read_csv(truth)
    is_lens = np.asarray(table["is_lens"]) == 1
    catalogued = np.asarray(table["catalogued"]) == 1
    lenses = set(np.asarray(table["OBJECT_ID"])[is_lens & catalogued].tolist())
    ranked = pq.read_table(scan_dir / "candidates.parquet", columns=["id"])["id"].to_pylist()
    scanned = lenses & set(ranked)
    rows = []
    for k in sorted({10, 30, 100, 300, 1000, len(ranked)}):
        if k > len(ranked):
            continue
        found = len(lenses & set(ranked[:k]))
        rows.append(
            {
                "top_k": k,
                "per_million_objects": round(k / n_catalogued * 1e6),
                "lenses_found": found,
                "of_planted": len(lenses),
                "of_scanned": len(scanned),
                "completeness": round(found / len(lenses), 3) if lenses else None,
            }
        )
    return rows


# ----------------------------------------------------------------------------- the share
def share(tiles: Path, catalog: Path, models: list[Path], objects: int) -> dict[str, float]:
    """ms per object on one core: cutting from the tile against inference (the scan's path)."""
    import torch

    from lensfinder.config import PredictConfig
    from lensfinder.data.tile_source import open_tiles
    from lensfinder.predict import Predictor

    torch.set_num_threads(1)
    source = open_tiles(tiles, catalog)
    positions = np.arange(min(objects, len(source)))
    with common.Stopwatch() as cut_watch:
        cut = source.read(positions)
    predictor = Predictor(models, PredictConfig())
    predictor.warm_up()
    ok = cut.valid
    with common.Stopwatch() as model_watch:
        predictor.predict_arrays(cut.vis[ok], cut.nisp[ok])
    cut_ms = 1000 * cut_watch.seconds / len(positions)
    model_ms = 1000 * model_watch.seconds / max(1, int(ok.sum()))
    return {
        "objects": len(positions),
        "cut_ms_per_object": round(cut_ms, 2),
        "inference_ms_per_object": round(model_ms, 2),
        "cut_share": round(cut_ms / (cut_ms + model_ms), 3),
    }


# ----------------------------------------------------------------------------- memory
def _status_mib(field: str) -> float:
    """A memory line of /proc/self/status in MiB: ``VmHWM`` is this process's peak RSS (unlike
    ``ru_maxrss``, not carried over from the parent across exec), ``VmRSS`` its RSS now."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return round(int(line.split()[1]) / 1024, 1)
    raise RuntimeError(f"no {field} in /proc/self/status")


def memory_child(tiles: str, catalog: str, out: str) -> None:
    """In a fresh process: peak RSS once the tile is planned (headers and WCS read), and after
    each read of a scan read's size (``READ_ROWS`` objects, as a scan worker reads them)."""
    from lensfinder.data.tile_source import open_tiles

    source = open_tiles(tiles, catalog)
    record: dict[str, Any] = {"objects": len(source), "after_open_mib": _status_mib("VmHWM")}
    peaks, valid = [], 0
    for start in range(0, len(source), READ_ROWS):
        cut = source.read(np.arange(start, min(len(source), start + READ_ROWS)))
        valid += int(cut.valid.sum())
        peaks.append(_status_mib("VmHWM"))
    record |= {
        "peak_after_each_read_mib": peaks,
        "valid": valid,
        "rss_end_mib": _status_mib("VmRSS"),
    }
    Path(out).write_text(json.dumps(record))


def measure_memory(tiles: Path, catalog: Path, out: Path) -> dict[str, Any]:
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    command = [sys.executable, __file__, "--memory-child", str(tiles), str(catalog), str(out)]
    subprocess.run(command, check=True, env=env)
    return json.loads(out.read_text())


def memory(workdir: Path, tiles: Path, catalog: Path, args: argparse.Namespace) -> dict:
    from lensfinder.testing import sparse_tile

    big_tiles, big_catalog = sparse_tile(
        workdir / "full-size", args.full_size, args.memory_objects, args.seed
    )
    with common.Stopwatch() as watch:
        big = measure_memory(big_tiles, big_catalog, workdir / "memory-full.json")
    small = measure_memory(tiles, catalog, workdir / "memory-small.json")
    whole = 4 * args.full_size**2 * 4 / 2**20
    return {
        "full_size": big,
        "full_size_s": round(watch.seconds, 1),
        "simulated_tile": small,
        "whole_full_tile_mib": round(whole),
    }


# ----------------------------------------------------------------------------- main
def main(argv: list[str] | None = None) -> None:
    args = _arguments(argv)
    if args.memory_child:
        memory_child(*args.memory_child)
        return
    common.quiet()
    machine = common.print_machine()
    began = time.perf_counter()
    with common.work_directory(args.workdir, "bench-tiles-") as workdir:
        tiles, catalog, truth, tile = simulate(workdir, args)
        models, trained = model_runs(workdir, args)
        paths = both_paths(workdir, tiles, catalog, models, args.workers)
        found = completeness(workdir / "scan-tiles", truth, tile["catalogued"])
        where = share(tiles, catalog, models, args.share_objects)
        mem = memory(workdir, tiles, catalog, args)
    details = {
        "tile": tile,
        "models": [str(m) for m in models],
        "trained": trained,
        "workers": args.workers,
        "paths": paths,
        "completeness": found,
        "share": where,
        "memory": mem,
        "wall_s": round(time.perf_counter() - began, 1),
    }
    print(json.dumps(details, indent=1))
    peak = max(mem["full_size"]["peak_after_each_read_mib"])
    figures = [
        common.figure("objects/s, cutouts+scan", paths["store_path_objects_per_s"], "1/s"),
        common.figure("objects/s, scan --tiles", paths["tile_scan_objects_per_s"], "1/s"),
        common.figure("cut share of a tile scan (1 core)", where["cut_share"]),
        common.figure("peak RSS cutting a full-size tile", peak, "MiB"),
    ]
    common.write_results(args.json, __file__, figures, details, machine, argv)


if __name__ == "__main__":
    main()
