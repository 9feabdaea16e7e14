"""Tiny data and models made on the fly, for the tests and the benchmarks (never committed).

One home for the factories every test module and benchmark needs: a challenge layout of
synthetic cutouts (``make_tiny_layout``), its packed store (``make_tiny_store``), FITS files
(``write_fits``), a randomly initialised run directory (``make_run``), a real 2-process
Dask cluster (``two_worker_cluster``) and a large, mostly empty mosaic tile (``sparse_tile``).
Lenses carry a bright-enough arc that a small CNN can
learn the task in seconds; nothing here is physical.
"""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import torch
from astropy.io import fits

from lensfinder.config import InputConfig, ModelConfig, SplitConfig, TrainConfig
from lensfinder.data.identity import data_record
from lensfinder.data.source import open_source
from lensfinder.data.store import pack
from lensfinder.layout import CATALOG_NAME, format_catalog, image_path
from lensfinder.models.batchnorm import batchnorm_layers
from lensfinder.models.checkpoint import save_model
from lensfinder.models.factory import create_model
from lensfinder.surveys import EUCLID

TINY_INPUT = InputConfig(size=32, vis_sampling="bin")  # the whole field: arcs at any radius
TINY_MODEL = ModelConfig(arch="test_efficientnet", pretrained=None)  # ~100k parameters
# BN method 2: batch statistics at inference, in groups of 4.
TINY_BN_BATCH_MODEL = replace(TINY_MODEL, bn_inference="batch", bn_inference_batch=4)


def tiny_train_config(**overrides: Any) -> TrainConfig:
    """One epoch of the test network at 32 px, batches of 8, never stopped for a low AUROC:
    the training settings most tests start from (``overrides`` replace any field)."""
    base = TrainConfig(
        input=TINY_INPUT,
        model=TINY_MODEL,
        split=SplitConfig(seed=0, test_fraction=0.1, val_fraction=0.3),
        max_epochs=1,
        batch_size=8,
        batch_size_max=8,
        stop_auroc_drop=1.0,
        channels_last=False,
    )
    return replace(base, **overrides)


# Per-band flux factors relative to VIS, like the real challenge files (VIS ~3e-11, NISP ~6e-10):
# normalisation must cope with bands whose units differ by an order of magnitude.
TINY_BAND_FLUX = {"VIS": 1.0, "Y": 20.0, "J": 20.0, "H": 20.0}
# Colours: the lens galaxy is red (brighter in NISP), the lensed source blue (brighter in VIS).
_LENS_COLOUR = {"VIS": 1.0, "Y": 1.6, "J": 2.0, "H": 2.3}
# The non-lens kinds written by ``make_tiny_layout(kinds=True)``.
TINY_KINDS = ("elliptical", "spiral", "ring")
_ARC_COLOUR = {"VIS": 1.0, "Y": 0.8, "J": 0.7, "H": 0.6}


def _sky_grid(pixels: int, pixel_scale: float) -> tuple[np.ndarray, np.ndarray]:
    """Arcsec offsets of pixel centres from the cutout centre (x to the right, y up)."""
    axis = (np.arange(pixels) - (pixels - 1) / 2.0) * pixel_scale
    return np.meshgrid(axis, axis, indexing="xy")


def _render(
    band: str,
    pixels: int,
    pixel_scale: float,
    psf_sigma: float,
    scene: dict,
    rng: np.random.Generator,
) -> np.ndarray:
    """One band of one object in noise-sigma units: Gaussian galaxies plus an optional arc.

    Blurring is analytic (the PSF sigma added in quadrature to every Gaussian width), so NISP
    gets blurred counterparts of the VIS scene at the same sky positions.
    """
    x, y = _sky_grid(pixels, pixel_scale)
    pixel_area = (pixel_scale / 0.1) ** 2  # surface brightness per VIS pixel -> per this pixel
    image = np.zeros_like(x)
    for gx, gy, amp, sig, q, phi in scene["galaxies"]:
        c, s = np.cos(phi), np.sin(phi)
        u = (x - gx) * c + (y - gy) * s
        v = -(x - gx) * s + (y - gy) * c
        su2, sv2 = sig**2 + psf_sigma**2, (sig * q) ** 2 + psf_sigma**2
        norm = sig * sig * q / np.sqrt(su2 * sv2)  # flux conserved under blurring
        image += amp * norm * np.exp(-0.5 * (u**2 / su2 + v**2 / sv2)) * _LENS_COLOUR[band]
    if scene["arc"] is not None:
        cx, cy, radius, width, amp, theta0, extent = scene["arc"]
        r = np.hypot(x - cx, y - cy)
        dtheta = np.angle(np.exp(1j * (np.arctan2(y - cy, x - cx) - theta0)))
        w2 = width**2 + psf_sigma**2
        radial = width / np.sqrt(w2) * np.exp(-0.5 * (r - radius) ** 2 / w2)
        image += amp * radial * np.exp(-0.5 * (dtheta / extent) ** 2) * _ARC_COLOUR[band]
    # Noise is 1 per pixel in every band; the signal per pixel grows with the pixel area.
    return image * pixel_area + rng.normal(0.0, 1.0, size=image.shape)


def _draw_scene(rng: np.random.Generator, is_lens: bool) -> dict:
    """A lens galaxy at the centre, 0-2 companions, and (for lenses) an arc at 1.0-1.5"."""
    galaxies = [
        (
            rng.normal(0, 0.05),
            rng.normal(0, 0.05),
            rng.uniform(8.0, 20.0),  # peak, noise sigmas per VIS pixel
            rng.uniform(0.3, 0.6),  # major-axis sigma, arcsec
            rng.uniform(0.5, 1.0),  # axis ratio
            rng.uniform(0, np.pi),
        )
    ]
    for _ in range(rng.integers(0, 3)):
        radius, angle = rng.uniform(3.0, 8.0), rng.uniform(0, 2 * np.pi)
        galaxies.append(
            (
                radius * np.cos(angle),
                radius * np.sin(angle),
                rng.uniform(3.0, 8.0),
                rng.uniform(0.15, 0.3),
                rng.uniform(0.5, 1.0),
                rng.uniform(0, np.pi),
            )
        )
    arc = None
    if is_lens:
        arc = (
            galaxies[0][0],
            galaxies[0][1],
            rng.uniform(1.0, 1.5),  # Einstein radius, arcsec (10-15 VIS pixels)
            rng.uniform(0.08, 0.14),  # radial width, arcsec
            rng.uniform(4.0, 7.0),  # peak, noise sigmas per VIS pixel
            rng.uniform(0, 2 * np.pi),
            rng.uniform(0.6, 1.8),  # azimuthal sigma, radians
        )
    return {"galaxies": galaxies, "arc": arc}


def _render_bands(
    scene: dict, rng: np.random.Generator, vis_size: int, nisp_size: int, flux_scale: float
) -> list[np.ndarray]:
    """One object's images in ``EUCLID.bands`` order (VIS, Y, J, H), in challenge-like units."""
    images = []
    for band in EUCLID.bands:
        pixels = vis_size if band.instrument == "VIS" else nisp_size
        sigma = band.psf_sigma_pixels * band.pixel_scale
        image = _render(band.name, pixels, band.pixel_scale, sigma, scene, rng)
        images.append(image * (flux_scale * TINY_BAND_FLUX[band.name]))
    return images


def tiny_cutouts(n: int, seed: int = 0, flux_scale: float = 1e-11) -> tuple[np.ndarray, np.ndarray]:
    """``n`` objects (every other one a lens) as ``make_tiny_layout`` draws them, in memory:
    VIS (n, 200, 200) and NISP (n, 3, 66, 66) float32, for speed and equality checks that
    need real-looking cutouts but no files."""
    rng = np.random.default_rng(seed)
    vis = np.empty((n, 200, 200), dtype=np.float32)
    nisp = np.empty((n, 3, 66, 66), dtype=np.float32)
    for index in range(n):
        images = _render_bands(_draw_scene(rng, index % 2 == 0), rng, 200, 66, flux_scale)
        vis[index], nisp[index] = images[0], np.stack(images[1:])
    return vis, nisp


def _catalog_row(rng: np.random.Generator, object_id: int, is_lens: bool) -> dict[str, float | str]:
    """Catalogue quantities that make the default label rule agree with ``is_lens``."""
    row: dict[str, float | str] = {
        "ID": object_id,
        "x_crit": rng.uniform(-1, 1),
        "y_crit": rng.uniform(-1, 1),
        "source_ID": int(rng.integers(1, 10**6)),
        "z_source": rng.uniform(1.0, 4.0),
        "z_lens": rng.uniform(0.2, 1.0),
        "mag_source": rng.uniform(22, 27),
        "ein_area": rng.uniform(0.5, 5.0),
        "n_crit": int(rng.integers(0, 3)),
        "r_source": rng.uniform(0.05, 0.5),
        "crit_area": rng.uniform(0.1, 5.0),
        "n_pix_source": float(rng.integers(50, 800)),
        "source_flux": rng.uniform(1e-12, 1e-10),
        "n_pix_lens": float(rng.integers(100, 3000)),
        "lens_flux": rng.uniform(1e-11, 1e-9),
        "n_source_im": float(rng.integers(1, 5)),
        "mag_eff": rng.uniform(2.0, 30.0),
        "sb_contrast": rng.uniform(0.01, 1.0),
        "color_diff": rng.uniform(-1, 1),
        "n_gal_3": int(rng.integers(0, 3)),
        "n_gal_5": int(rng.integers(0, 5)),
        "n_gal_10": int(rng.integers(0, 10)),
        "halo_mass": 10 ** rng.uniform(11.5, 13.5),
        "star_mass": 10 ** rng.uniform(10, 11.5),
        "mag_lens": rng.uniform(18, 23),
        "n_sources": float(rng.integers(1, 4)),
    }
    if not is_lens:  # fail the default rule in one of its three ways
        way = int(rng.integers(0, 3))
        if way == 0:
            row["n_source_im"] = 0.0
        elif way == 1:
            row["mag_eff"] = rng.uniform(0.5, 1.5)
        else:
            row["n_pix_source"] = float(rng.integers(0, 15))
    return row


def write_fits(
    path: Path,
    data: np.ndarray,
    ra: float | None = None,
    dec: float | None = None,
    pixel_scale: float = 0.1,
) -> None:
    """One FITS image (big-endian float32, as astropy writes it), with a TAN WCS centred on
    (ra, dec) at the cutout centre when both are given."""
    header = fits.Header()
    if ra is not None and dec is not None:
        header["CTYPE1"], header["CTYPE2"] = "RA---TAN", "DEC--TAN"
        header["CRPIX1"] = header["CRPIX2"] = (data.shape[-1] + 1) / 2.0  # 1-based centre
        header["CRVAL1"], header["CRVAL2"] = ra, dec
        header["CDELT1"], header["CDELT2"] = -pixel_scale / 3600.0, pixel_scale / 3600.0
        header["CUNIT1"] = header["CUNIT2"] = "deg"
    path.parent.mkdir(parents=True, exist_ok=True)
    fits.PrimaryHDU(data=np.asarray(data, dtype=">f4"), header=header).writeto(path, overwrite=True)


def make_tiny_layout(
    root: Path,
    n: int = 24,
    seed: int = 0,
    lens_fraction: float = 0.5,
    vis_size: int = 200,
    nisp_size: int = 66,
    flux_scale: float = 1e-11,
    first_id: int = 200000,
    wcs: bool = True,
    catalog: bool = True,
    kinds: bool = False,
) -> Path:
    """Write a valid challenge layout of ``n`` objects in well under a second per 10 objects.

    Noisy elliptical lens galaxies; lenses get a bright-enough arc at 10-15 VIS pixels (blurred
    in NISP) so that a small CNN can learn the task. Pixel values are in noise sigmas times
    ``flux_scale`` (challenge-like ~1e-11 by default) times a per-band factor, so nothing
    downstream may rely on absolute units. Lenses are exactly ``round(n * lens_fraction)``
    objects, in shuffled order; labels by the default rule match them. ``vis_size`` and
    ``nisp_size`` other than 200 and 66 make wrong-shape files, which readers must reject.
    ``kinds``: add the simulator's ``kind`` column (``lens``, and non-lenses in turn from
    ``TINY_KINDS``).
    """
    root = Path(root)
    rng = np.random.default_rng(seed)
    is_lens = np.zeros(n, dtype=bool)
    is_lens[: round(n * lens_fraction)] = True
    rng.shuffle(is_lens)
    rows = []
    for index in range(n):
        object_id = first_id + index
        scene = _draw_scene(rng, bool(is_lens[index]))
        ra, dec = (150.0 + rng.uniform(-1, 1), 2.0 + rng.uniform(-1, 1)) if wcs else (None, None)
        images = _render_bands(scene, rng, vis_size, nisp_size, flux_scale)
        for band, image in zip(EUCLID.bands, images, strict=True):
            write_fits(image_path(root, band, object_id), image, ra, dec, band.pixel_scale)
        rows.append(_catalog_row(rng, object_id, bool(is_lens[index])))
        if kinds:
            rows[-1]["kind"] = "lens" if is_lens[index] else TINY_KINDS[index % len(TINY_KINDS)]
    if catalog:
        text = format_catalog(rows, comments=["tiny lensfinder test layout", f"seed {seed}"])
        (root / CATALOG_NAME).write_text(text)
    return root


def make_tiny_store(layout: Path, out: Path) -> Path:
    """``layout`` packed into the Zarr store ``out`` (quietly); returns ``out``."""
    pack(layout, out, progress=False)
    return out


def make_run(
    run_dir: Path,
    seed: int = 0,
    input_cfg: InputConfig = TINY_INPUT,
    model_cfg: ModelConfig = TINY_MODEL,
    *,
    label_rule: str | None = None,
    split: SplitConfig | None = None,
    data: Path | None = None,
    head_scale: float = 1.0,
    random_bn_stats: bool = False,
) -> Path:
    """A randomly initialised model saved as a run directory, as training leaves it.

    ``split`` and ``data`` record how and on what it was "trained" (evaluate's ``auto`` split
    reads them); ``head_scale`` > 1 spreads the near-zero logits over a few units, where
    averaging probabilities and averaging logits differ measurably; ``random_bn_stats`` gives
    batch-norm running statistics unlike any batch's own, so BN modes differ measurably.
    """
    torch.manual_seed(seed)
    model = create_model(model_cfg, input_cfg)
    with torch.no_grad():
        for parameter in model.head_parameters():
            parameter.mul_(head_scale)
        if random_bn_stats:
            for layer in batchnorm_layers(model):
                if layer.running_mean is not None and layer.running_var is not None:
                    layer.running_mean.uniform_(-0.5, 0.5)
                    layer.running_var.uniform_(0.5, 2.0)
    train = TrainConfig(input=input_cfg, model=model_cfg, split=split or SplitConfig())
    meta: dict = {"input": input_cfg, "model": model_cfg, "train": train, "metrics": {}}
    if label_rule is not None:
        meta["label_rule"] = label_rule
    if data is not None:
        meta["data"] = data_record(open_source(data))
    return save_model(run_dir, model, meta)


def two_worker_cluster(**extra: Any) -> Any:
    """A real, quiet 2-process Dask LocalCluster (one thread each), for tests that need real
    worker processes (crashes, preloads); the caller closes it."""
    import logging

    from distributed import LocalCluster

    return LocalCluster(
        n_workers=2,
        threads_per_worker=1,
        processes=True,
        dashboard_address=None,
        scheduler_kwargs={"dashboard_address": ":0"},
        silence_logs=logging.CRITICAL,
        **extra,
    )


def sparse_tile(root: Path, size: int, objects: int, seed: int) -> tuple[Path, Path]:
    """A ``size``^2 tile in four bands as sparse FITS files (valid WCS; zeros but for a noise
    patch around each of ``objects`` positions) and its catalogue: no rendering, little disk."""
    from astropy.table import Table

    from lensfinder import mer
    from lensfinder.simulate.tile import image_header, tile_wcs

    rng = np.random.default_rng(seed)
    wcs = tile_wcs(size, 0.1, 150.0, 2.0)
    x, y = (rng.uniform(400, size - 400, objects) for _ in range(2))
    root.mkdir(parents=True, exist_ok=True)
    for band in EUCLID.bands:
        path = root / mer.image_name(
            "science", band.name, 1, "SPARSE_20250101T000000.000000Z_00.00"
        )
        if path.exists():
            continue
        header = fits.PrimaryHDU(
            np.zeros((1, 1), np.float32), image_header(wcs, band, "science")
        ).header
        header["NAXIS1"], header["NAXIS2"] = size, size
        head = header.tostring().encode()
        data_bytes = size * size * 4
        with open(path, "wb") as handle:
            handle.write(head)
            handle.truncate(len(head) + -(-data_bytes // 2880) * 2880)  # sparse: zeros
        pixels = np.memmap(path, dtype=">f4", mode="r+", offset=len(head), shape=(size, size))
        for cx, cy in zip(x.astype(int), y.astype(int), strict=True):
            pixels[cy - 120 : cy + 120, cx - 120 : cx + 120] = rng.normal(size=(240, 240))
        pixels.flush()
        del pixels
    ra, dec = wcs.pixel_to_world_values(x, y)
    catalog = root / "catalogue.fits"
    Table(
        {"OBJECT_ID": np.arange(1, objects + 1), "RIGHT_ASCENSION": ra, "DECLINATION": dec}
    ).write(catalog, overwrite=True)
    return root, catalog


# -- the command line, as a user sees it -------------------------------------------------------
def cli(*args: object) -> Any:
    """Run ``lensfinder ARGS`` in-process (typer's CliRunner); the result has ``exit_code`` and
    ``output``."""
    from typer.testing import CliRunner

    from lensfinder.cli import app

    return CliRunner().invoke(app, [str(a) for a in args])


def one_line_error(result: Any, *words: str) -> str:
    """The CLI said one line, ``error: ...``, with exit status 2 and no traceback, holding every
    one of ``words``; returns that line."""
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.output
    assert "Traceback" not in result.output
    for word in words:
        assert word in lines[0], lines[0]
    return lines[0]
