"""Probes: a trained model scored on copies of an evaluation store altered the way real survey
cutouts differ from simulated ones, before anything is trained for it (README, "Session 22").

    .venv/bin/python benchmarks/bench_probes.py --model RUN --data shift2/shift.zarr \\
        --workdir probes --probe zero-strip:0.2 --probe gradient:2 --probe elongated-psf:1.2,0.3

Each ``--probe NAME:ARGS`` makes a copy of ``--data`` (in ``--workdir``, deleted after scoring
unless ``--keep``), alters every object's pixels with a generator of its own (the same objects,
labels and order), and scores it with D4 test-time augmentation; the unaltered store is scored
first. A probe that costs much points at a difference the simulator or the normaliser should
cover; one that costs nothing rules a difference out cheaply.

- ``elongated-psf:MAJOR,MINOR``: every band convolved with an elliptical Gaussian of these sigmas
  (VIS pixels; NISP a third of them), at a random angle per object;
- ``blur:SIGMA``: VIS convolved with a round Gaussian (a wider VIS PSF);
- ``gradient:SIGMAS``: a plane in every band rising this many noise sigmas from the centre to
  the edge, in a random direction (background-subtraction residuals, a bright neighbour's halo);
- ``zero-strip:FRACTION[,SHARE]``: a strip of exact zeros along one random side, FRACTION of
  the width, in every band of SHARE of the objects (default all): off a mosaic's footprint;
- ``nan-strip:FRACTION[,SHARE]``: the same with NaN;
- ``nisp-noise:FACTOR``: NISP's noise multiplied by FACTOR (extra Gaussian noise of the
  measured sigma): another depth ratio between the instruments;
- ``halo:SIGMAS[,SCALE]``: the exponential wings (scale length SCALE arcsec, default 2) of a
  bright galaxy centred 2" beyond a random edge, SIGMAS noise sigmas where they enter the
  cutout: a curved gradient, as real neighbours make (in every band, on the sky's own grid);
- ``cosmic-rays:COUNT[,SIGMAS]``: COUNT cosmic-ray residuals in VIS only, each a sharp
  one-pixel track of 3-15 pixels at a random angle, SIGMAS (default 30) noise sigmas per pixel,
  in the central 100x100 VIS pixels (a hit the stack did not reject; NISP sees nothing).
"""

from __future__ import annotations

import argparse
import json
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any

import bench_domain_shift as shift
import common
import numpy as np

CHUNK = 256  # objects altered at a time

Alteration = Callable[[np.ndarray, np.ndarray, np.random.Generator], None]  # in place


def _sigma(images: np.ndarray) -> np.ndarray:
    """Per image and band (..., 1, 1): the noise sigma the normaliser measures."""
    from lensfinder.data.pixels import background_and_noise

    return background_and_noise(images)[1][..., None]


def _kernel(major: float, minor: float, angle: float) -> np.ndarray:
    radius = int(np.ceil(4 * max(major, minor, 0.3)))
    y, x = np.mgrid[-radius : radius + 1, -radius : radius + 1].astype(float)
    along = np.cos(angle) * x + np.sin(angle) * y
    across = -np.sin(angle) * x + np.cos(angle) * y
    kernel = np.exp(-0.5 * ((along / max(major, 1e-3)) ** 2 + (across / max(minor, 1e-3)) ** 2))
    return (kernel / kernel.sum()).astype(np.float32)


def elongated_psf(major: float, minor: float) -> Alteration:
    from scipy.ndimage import convolve

    def alter(vis: np.ndarray, nisp: np.ndarray, rng: np.random.Generator) -> None:
        angle = rng.uniform(0, np.pi)
        vis[:] = convolve(vis, _kernel(major, minor, angle), mode="nearest")
        small = _kernel(major / 3, minor / 3, angle)
        for band in nisp:
            band[:] = convolve(band, small, mode="nearest")

    return alter


def blur(sigma: float) -> Alteration:
    from scipy.ndimage import gaussian_filter

    def alter(vis: np.ndarray, nisp: np.ndarray, rng: np.random.Generator) -> None:
        vis[:] = gaussian_filter(vis, sigma)

    return alter


def gradient(sigmas: float) -> Alteration:
    def alter(vis: np.ndarray, nisp: np.ndarray, rng: np.random.Generator) -> None:
        angle = rng.uniform(0, 2 * np.pi)
        for images in (vis[None], nisp):
            side = images.shape[-1]
            axis = (np.arange(side) - (side - 1) / 2) / ((side - 1) / 2)
            plane = np.cos(angle) * axis[None, :] + np.sin(angle) * axis[:, None]
            images += (sigmas * _sigma(images) * plane).astype(np.float32)

    return alter


def halo(sigmas: float, scale: float) -> Alteration:
    def alter(vis: np.ndarray, nisp: np.ndarray, rng: np.random.Generator) -> None:
        angle = rng.uniform(0, 2 * np.pi)
        for images, pixel in ((vis[None], 0.1), (nisp, 0.3)):
            side = images.shape[-1]
            offset = (np.arange(side) - (side - 1) / 2) * pixel  # arcsec from the centre
            distance = side * pixel / 2 + 2.0  # the galaxy 2" beyond the edge
            x0, y0 = distance * np.cos(angle), distance * np.sin(angle)
            r = np.hypot(offset[None, :] - x0, offset[:, None] - y0)
            wings = np.exp(-(r - 2.0) / scale)  # 1 where the wings enter the cutout
            images += (sigmas * _sigma(images) * wings).astype(np.float32)

    return alter


def strip(fraction: float, share: float, value: float) -> Alteration:
    def alter(vis: np.ndarray, nisp: np.ndarray, rng: np.random.Generator) -> None:
        side, chosen = int(rng.integers(0, 4)), rng.random() < share
        if not chosen:
            return
        for images in (vis[None], nisp):
            w = round(fraction * images.shape[-1])
            sides = [np.s_[..., :w, :], np.s_[..., -w:, :], np.s_[..., :, :w], np.s_[..., :, -w:]]
            images[sides[side]] = value

    return alter


def nisp_noise(factor: float) -> Alteration:
    def alter(vis: np.ndarray, nisp: np.ndarray, rng: np.random.Generator) -> None:
        extra = np.sqrt(max(factor**2 - 1, 0.0)) * _sigma(nisp)
        nisp += (extra * rng.standard_normal(nisp.shape)).astype(np.float32)

    return alter


def cosmic_rays(count: int, sigmas: float) -> Alteration:
    def alter(vis: np.ndarray, nisp: np.ndarray, rng: np.random.Generator) -> None:
        side = vis.shape[-1]
        amplitude = sigmas * float(_sigma(vis).ravel()[0])
        for _ in range(count):
            length, angle = rng.uniform(3, 15), rng.uniform(0, np.pi)
            start = rng.uniform(side / 4, 3 * side / 4, 2)
            steps = np.linspace(0, length, int(np.ceil(length)) * 2)
            rows = np.clip(np.round(start[0] + np.sin(angle) * steps).astype(int), 0, side - 1)
            cols = np.clip(np.round(start[1] + np.cos(angle) * steps).astype(int), 0, side - 1)
            vis[rows, cols] += np.float32(amplitude)

    return alter


def probe(spec: str) -> Alteration:
    """The alteration ``NAME:ARGS`` names (see the module doc); a clear error otherwise."""
    name, _, text = spec.partition(":")
    try:
        args = [float(a) for a in text.split(",") if a]
        makers: dict[str, Callable[[], Alteration]] = {
            "elongated-psf": lambda: elongated_psf(args[0], args[1]),
            "blur": lambda: blur(args[0]),
            "gradient": lambda: gradient(args[0]),
            "zero-strip": lambda: strip(args[0], args[1] if len(args) > 1 else 1.0, 0.0),
            "nan-strip": lambda: strip(args[0], args[1] if len(args) > 1 else 1.0, np.nan),
            "nisp-noise": lambda: nisp_noise(args[0]),
            "halo": lambda: halo(args[0], args[1] if len(args) > 1 else 2.0),
            "cosmic-rays": lambda: cosmic_rays(int(args[0]), args[1] if len(args) > 1 else 30.0),
        }
        return makers[name]()
    except (KeyError, IndexError, ValueError):
        raise SystemExit(
            f"bench_probes: --probe {spec!r}: expected NAME:ARGS, NAME one of elongated-psf, blur, "
            "gradient, halo, zero-strip, nan-strip, nisp-noise, cosmic-rays (see the module doc)"
        ) from None


def altered_copy(store: Path, out: Path, alter: Alteration, seed: int) -> Path:
    """``store`` copied to ``out`` with every object's pixels altered (object i draws from
    ``[seed, i]``, so a probe is the same whatever the chunking)."""
    import zarr

    if out.exists():
        shutil.rmtree(out)
    shutil.copytree(store, out)
    group = zarr.open_group(str(out), mode="r+")
    n = group["vis"].shape[0]
    for start in range(0, n, CHUNK):
        stop = min(n, start + CHUNK)
        vis, nisp = np.asarray(group["vis"][start:stop]), np.asarray(group["nisp"][start:stop])
        for i in range(stop - start):
            alter(vis[i], nisp[i], np.random.default_rng([seed, start + i]))
        group["vis"][start:stop] = vis
        group["nisp"][start:stop] = nisp
    return out


def score(model: Path, data: Path, out: Path, bootstrap: int) -> dict[str, Any]:
    """``bench_domain_shift.score``'s row (D4 TTA), with the objects skipped by reason; a store
    where every object is skipped is the probe's answer, not a crash."""
    from lensfinder.errors import DataError

    try:
        row = shift.score(model, data, out, bootstrap)
    except DataError as exc:
        return {"auroc": None, "n": 0, "skipped": {}, "error": str(exc)}
    row["skipped"] = json.loads((out / "metrics.json").read_text()).get("skipped_reasons", {})
    return row


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--model", type=Path, required=True, help="a run (or ensemble) directory")
    parser.add_argument("--data", type=Path, required=True, help="a labelled store to alter")
    parser.add_argument("--workdir", type=Path, default=Path("probes"))
    parser.add_argument("--probe", action="append", default=[], help="NAME:ARGS (repeatable)")
    parser.add_argument("--seed", type=int, default=22)
    parser.add_argument("--bootstrap", type=int, default=200)
    parser.add_argument("--keep", action="store_true", help="keep the altered copies")
    common.add_json_argument(parser)
    args = parser.parse_args()
    alterations = [(spec, probe(spec)) for spec in args.probe]  # refuse bad ones first
    print(common.machine_line())
    args.workdir.mkdir(parents=True, exist_ok=True)
    rows = [
        {
            "probe": "as made",
            **score(args.model, args.data, args.workdir / "as-made", args.bootstrap),
        }
    ]
    for spec, alter in alterations:
        name = spec.replace(":", "-").replace(",", "_")
        copy = altered_copy(args.data, args.workdir / f"{name}.zarr", alter, args.seed)
        rows.append({"probe": spec, **score(args.model, copy, args.workdir / name, args.bootstrap)})
        if not args.keep:
            shutil.rmtree(copy)
        print(f"{spec}: AUROC {rows[-1]['auroc']}", flush=True)  # as each one ends
    print("\n| probe | AUROC [95% CI] | TPR at 1e-2 / 1e-3 | scored | skipped |")
    print("|---|---|---|---|---|")
    for r in rows:
        if r["auroc"] is None:
            print(f"| {r['probe']} | - | - | 0 | {r['error']} |")
            continue
        ci = f" [{r['auroc_ci'][0]:.3f}, {r['auroc_ci'][1]:.3f}]" if r["auroc_ci"] else ""
        tprs = (r["tpr_at_fpr_1e-2"], r["tpr_at_fpr_1e-3"])
        tpr = " / ".join("-" if t is None else f"{t:.2f}" for t in tprs)
        skipped = ", ".join(f"{k} {v}" for k, v in r["skipped"].items()) or "-"
        print(f"| {r['probe']} | {r['auroc']:.3f}{ci} | {tpr} | {r['n']} | {skipped} |")
    common.write_results(
        args.json, __file__, rows, {"model": str(args.model), "data": str(args.data)}
    )


if __name__ == "__main__":
    main()
