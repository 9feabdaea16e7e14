"""Images for people: colour composites of VIS + NISP cutouts and PNG mosaics.

Shared by the simulator's preview, the candidate gallery, the failure mosaics and the grading
page. Every scaling is measured on the image itself, with the model input's noise estimator and
NISP->VIS resampler (their numpy twins in ``data.pixels``: no torch here), so the pictures
look alike in any flux units (simulated e-/s, the challenge's tiny arbitrary units, real survey
data) and align the bands as the model does. As in the Euclid Q1 lens searches, VIS gives the
luminance (its resolution shows arcs) and NISP gives the colour (red lens galaxies, blue
star-forming sources).

``draw_view`` draws the Euclid Q1 lens searches' views (``VIEWS``): VIS luminance with NISP
colour; H, Y+J, VIS as red, green, blue with a per-band arcsinh softening; the same bands with a
midtones transfer function (MTF, the "screen transfer function" of astronomical image tools);
VIS only.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import numpy as np
from PIL import Image
from scipy.ndimage import gaussian_filter

from lensfinder.config import ColourViewConfig, GalleryConfig
from lensfinder.data.pixels import (
    resample_nisp,
    sky_plane_and_noise,
    tilted_sky,
    zero_filled_as_nan,
)
from lensfinder.files import atomic_path
from lensfinder.surveys import EUCLID


def robust_background(image: np.ndarray) -> tuple[np.ndarray, float]:
    """(sky, noise sigma) of one 2-D image: the model input's estimator (``data.pixels.
    sky_plane_and_noise``, the numpy twin of ``data.transforms``': clipped median and MAD of
    the border frame, a tilted plane where the sky has a significant gradient), so pictures and
    model see the same noise. The sky is an image-sized array (a constant one on a flat sky).

    The sigma falls back to the standard deviation, then to 1, for images with no spread,
    so a blank or constant cutout never divides by zero. Zero-filled regions (no data) are
    left out, as the model input leaves them out (``data.pixels.zero_filled_as_nan``).
    """
    values = zero_filled_as_nan(np.ascontiguousarray(image, dtype=np.float32))
    level, slope_x, slope_y, noise = sky_plane_and_noise(values)
    median, sigma = float(level[0]), float(noise[0])
    finite = values[np.isfinite(values)]
    if not np.isfinite(median):
        median = float(np.median(finite)) if finite.size else 0.0
    if not sigma > 0:  # also NaN
        sigma = float(finite.std()) if finite.size else 0.0
    if not sigma > 0:
        sigma = 1.0
    return tilted_sky(median, float(slope_x[0]), float(slope_y[0]), values.shape), sigma


def in_noise_units(image: np.ndarray) -> np.ndarray:
    """Background-subtracted image divided by its noise sigma (NaN and inf become 0)."""
    sky, sigma = robust_background(image)
    scaled = (np.asarray(image, dtype=np.float64) - sky) / sigma
    return np.nan_to_num(scaled, nan=0.0, posinf=0.0, neginf=0.0)


def asinh_stretch(image: np.ndarray, softening: float = 3.0, top_percentile: float = 99.95):
    """Arcsinh stretch to [0, 1]: linear up to ``softening`` noise sigmas, logarithmic above, so
    faint arcs and a bright galaxy core show together. The brightest 0.05% of pixels saturate."""
    signal = in_noise_units(image)
    stretched = np.arcsinh(signal / softening)
    top = max(float(np.percentile(stretched, top_percentile)), float(np.arcsinh(10.0 / softening)))
    return np.clip(stretched / top, 0.0, 1.0)


def _on_vis_grid(nisp: np.ndarray, vis_pixels: int) -> np.ndarray:
    """NISP (c, h, w) onto the ``vis_pixels`` VIS grid with the model input's resampler: true
    pixel scales, centres aligned (19.8" of NISP is not stretched to VIS's 20")."""
    field = vis_pixels * EUCLID.band("VIS").pixel_scale
    return resample_nisp(np.nan_to_num(np.asarray(nisp, dtype=np.float32)), vis_pixels, field)


def colour_composite(vis: np.ndarray, nisp: np.ndarray, softening: float = 3.0) -> np.ndarray:
    """An RGB picture (H, W, 3) uint8 of one object: VIS luminance, NISP colour.

    ``vis`` is (H, W) at VIS's pixel scale; ``nisp`` is (3, h, w) in Y, J, H order at NISP's.
    Red comes from H, green from Y and J, blue from VIS blurred to NISP resolution, each in its
    own noise units and balanced on the brightest object, so colours are relative: a red lens
    galaxy looks orange-white and a blue arc around it looks blue, whatever the flux units.
    """
    vis = np.asarray(vis, dtype=np.float64)
    nisp = np.asarray(nisp, dtype=np.float64)
    if vis.ndim != 2 or nisp.ndim != 3 or nisp.shape[0] != 3:
        raise ValueError(
            f"colour_composite: need vis (H, W) and nisp (3, h, w), got {vis.shape}, {nisp.shape}"
        )
    shape = vis.shape
    luminance = asinh_stretch(vis, softening)

    blur = 1.0 * shape[0] / nisp.shape[1]  # about one NISP pixel, in VIS pixels
    blue = in_noise_units(gaussian_filter(np.nan_to_num(vis), blur))
    y, j, h = _on_vis_grid(np.stack([in_noise_units(band) for band in nisp]), shape[0])
    green = (y + j) / np.sqrt(2.0)
    red = h
    channels = np.stack([red, green, blue])
    channels = gaussian_filter(channels, (0, blur, blur))  # colour is a low-resolution quantity
    # Balance on the bright part of the picture (the channel values where the object is), but
    # never amplify a channel beyond a few of its noise sigmas: pure noise stays grey.
    sigmas = np.array([robust_background(c)[1] for c in channels])
    bright = luminance >= np.percentile(luminance, 98)
    levels = np.array([float(np.median(c[bright])) for c in channels])
    levels = np.maximum(levels, 5.0 * sigmas)
    balanced = np.clip(channels / levels[:, None, None], 0.0, None)
    floor = float(np.mean(3.0 * sigmas / levels))  # faint pixels tend to grey
    intensity = balanced.mean(axis=0)
    chroma = (balanced + floor) / (intensity + floor)[None]
    # Saturation follows the luminance: where VIS shows only noise, the picture stays grey
    # (NISP's wider PSF must not paint coloured halos around stars and galaxies).
    saturation = 1.3 * np.clip(gaussian_filter(luminance, blur) / 0.12, 0.0, 1.0)
    chroma = 1.0 + saturation[None] * (chroma - 1.0)
    rgb = np.clip(luminance[None] * chroma, 0.0, 1.0)
    return np.round(np.moveaxis(rgb, 0, -1) * 255).astype(np.uint8)


VIEWS: tuple[str, ...] = ("vis-nisp", "asinh", "mtf", "vis")
SHADOWS_SIGMA = 2.8  # the MTF view's black point, in noise sigmas below the sky


def mtf(x: np.ndarray | float, midtone: float) -> np.ndarray:
    """The midtones transfer function: 0 -> 0, ``midtone`` -> 1/2, 1 -> 1, monotonic."""
    x = np.asarray(x, dtype=np.float64)
    return (midtone - 1.0) * x / ((2.0 * midtone - 1.0) * x - midtone)


def mtf_stretch(
    image: np.ndarray, background: float = 0.25, top_percentile: float = 99.95
) -> np.ndarray:
    """An MTF stretch to [0, 1]: black ``SHADOWS_SIGMA`` noise sigmas below the sky, white at
    the top percentile, and the midtone that maps the sky level to ``background``."""
    signal = in_noise_units(image)
    white = max(float(np.percentile(signal, top_percentile)), 10.0)
    scaled = np.clip((signal + SHADOWS_SIGMA) / (white + SHADOWS_SIGMA), 0.0, 1.0)
    sky = SHADOWS_SIGMA / (white + SHADOWS_SIGMA)
    midtone = float(mtf(sky, background))  # MTF(sky; MTF(sky; b)) = b
    return np.clip(mtf(scaled, midtone), 0.0, 1.0)


def _grey(image: np.ndarray) -> np.ndarray:
    """A [0, 1] image as an RGB uint8 picture, grey."""
    grey = np.round(np.clip(image, 0.0, 1.0) * 255).astype(np.uint8)
    return np.repeat(grey[..., None], 3, axis=-1)


def _band_rgb(vis: np.ndarray, nisp: np.ndarray, stretch) -> np.ndarray:
    """RGB uint8 of H (red), the mean of Y and J (green) and VIS (blue), NISP on the VIS grid,
    ``stretch(image, band index)`` applied to each band on its own grid."""
    vis = np.asarray(vis, dtype=np.float64)
    stretched_nisp = np.stack([stretch(band, i + 1) for i, band in enumerate(nisp)])
    y, j, h = _on_vis_grid(stretched_nisp, vis.shape[0])
    rgb = np.stack([h, (y + j) / 2.0, stretch(vis, 0)], axis=-1)
    return np.round(np.clip(rgb, 0.0, 1.0) * 255).astype(np.uint8)


def draw_view(
    vis: np.ndarray,
    nisp: np.ndarray,
    view: str,
    colour: ColourViewConfig | None = None,
    softening: float = 3.0,
) -> np.ndarray:
    """One object as an RGB uint8 picture (H, W, 3) in one of ``VIEWS``. ``softening`` (noise
    sigmas) is the arcsinh softening of the vis-nisp and VIS-only views; the asinh view takes
    each band's from ``colour.asinh_band_softening``."""
    colour = colour or ColourViewConfig()
    if view == "vis-nisp":
        return colour_composite(vis, nisp, softening)
    if view == "vis":
        return _grey(asinh_stretch(vis, softening))
    if view == "asinh":
        soft = colour.asinh_band_softening
        return _band_rgb(vis, nisp, lambda image, band: asinh_stretch(image, soft[band]))
    if view == "mtf":
        return _band_rgb(vis, nisp, lambda image, _: mtf_stretch(image, colour.mtf_background))
    raise ValueError(f"view {view!r}: expected one of {', '.join(VIEWS)}")


def resize_square(image: np.ndarray, pixels: int) -> np.ndarray:
    """A uint8 picture (H, W) or (H, W, 3) resampled to ``pixels`` square (Lanczos)."""
    if image.shape[0] == pixels and image.shape[1] == pixels:
        return image
    return np.asarray(Image.fromarray(image).resize((pixels, pixels), Image.Resampling.LANCZOS))


def save_grid(
    images: Sequence[np.ndarray],
    titles: Sequence[str],
    path: str | Path,
    columns: int = GalleryConfig.columns,
    tile_inches: float = 2.2,
    dpi: int = 100,
) -> Path:
    """A PNG mosaic of images (RGB uint8, or 2-D arrays shown with an asinh stretch), each
    with its title; written atomically. Returns the path."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    if len(images) != len(titles):
        raise ValueError(f"save_grid: {len(images)} images but {len(titles)} titles")
    if not images:
        raise ValueError("save_grid: no images")
    columns = max(1, min(columns, len(images)))
    rows = -(-len(images) // columns)
    figure = Figure(figsize=(columns * tile_inches, rows * (tile_inches + 0.35)), dpi=dpi)
    FigureCanvasAgg(figure)
    for i, (image, title) in enumerate(zip(images, titles, strict=True)):
        axes = figure.add_subplot(rows, columns, i + 1)
        image = np.asarray(image)
        if image.ndim == 2:
            axes.imshow(asinh_stretch(image), cmap="gray", origin="lower", vmin=0, vmax=1)
        else:
            axes.imshow(image, origin="lower")
        axes.set_title(title, fontsize=7)
        axes.set_axis_off()
    figure.subplots_adjust(left=0.01, right=0.99, bottom=0.01, top=0.95, wspace=0.04, hspace=0.25)
    path = Path(path)
    with atomic_path(path) as tmp:
        figure.savefig(tmp, format="png", facecolor="white")
    return path
