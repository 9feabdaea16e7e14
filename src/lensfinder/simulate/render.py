"""Render a scene in every band with lenstronomy's lens and light models, fast at the same physics.

What makes it fast (``tests/test_render.py`` checks the result against lenstronomy's own
``ImageModel`` with every pixel supersampled):

- **one evaluation of each light profile**: a profile's shape is the same in all bands (only its
  magnitude differs), so it is evaluated once at unit amplitude on the reference (VIS) grid and
  each band scales these unit images by its own amplitudes;
- **NISP from the VIS sampling**: NISP pixels are exact 3x3 blocks of VIS pixels on the same sky
  (both grids are centred on the cutout), so a NISP band's sky is the block mean of the
  VIS-sampled sky before its own PSF: at least 9 samples per NISP pixel, finer than rendering
  NISP on its own grid. Bands that do not tile the reference grid are sampled on their own grid;
- **deflections once per lens galaxy**: the lens equation is solved on the grid once and reused
  for every source tried behind the galaxy and for every band;
- **supersampling where it changes the answer**: a pixel's mean is approximated by its centre
  value, whose leading error is (h^2/24) times the Laplacian of the surface brightness. A pixel is
  split into ``factor`` x ``factor`` sub-pixels only where that estimate exceeds ``tolerance``
  times the band's background noise (and around profiles more compact than a few pixels, which
  centre sampling can miss entirely), instead of in fixed discs around everything.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from lensfinder.config import SimulateConfig
from lensfinder.simulate.observing import NOMINAL, Observing
from lensfinder.simulate.scene import Light, Scene
from lensfinder.surveys import Band, Survey

COMPONENTS = ("central", "field", "source", "stars")
COMPACT_PIXELS = 3.0  # profiles smaller than this many pixels get their cores supersampled


@dataclass
class BandImages:
    """Noise-free components (in e-/s per pixel) and the observed image of one band."""

    band: Band
    components: dict[str, np.ndarray]
    background_noise: float  # sigma per pixel of sky + read noise, e-/s
    image: np.ndarray | None = None  # model + noise, float32

    @property
    def model(self) -> np.ndarray:
        return sum(self.components.values())  # type: ignore[return-value]


def preload() -> None:
    """Import the lenstronomy modules rendering needs (seconds), e.g. once before forking
    workers so that each does not pay for it again."""
    import lenstronomy.LensModel.lens_model
    import lenstronomy.LensModel.Solver.lens_equation_solver
    import lenstronomy.LightModel.light_model
    import lenstronomy.SimulationAPI.data_api
    import lenstronomy.Util.image_util  # noqa: F401

    # load the compiled profiles (numba's on-disk cache, or compile once) before workers fork
    epl = {"theta_E": 1.0, "gamma": 2.0, "e1": 0.1, "e2": 0.0, "center_x": 0.0, "center_y": 0.0}
    lens_model(["EPL"]).ray_shooting(np.zeros(1), np.zeros(1), [epl])


# lenstronomy ships some profiles twice, the second compiled with numba (a lenstronomy dependency):
# the same deflections (to 1e-15 arcsec here) at a fraction of the time.
COMPILED_PROFILES = {"EPL": "EPL_NUMBA"}


def lens_model(models: Sequence[str]) -> Any:
    """lenstronomy's ``LensModel`` of a scene's mass profiles, compiled variants preferred."""
    from lenstronomy.LensModel.lens_model import LensModel

    return LensModel([COMPILED_PROFILES.get(name, name) for name in models])


@functools.lru_cache(maxsize=32)
def pixel_grid(band: Band) -> Any:
    """lenstronomy's pixel grid (``ImageData``) of a band's cutout: coordinates and the
    sky-to-pixel mapping, in the same convention as lenstronomy's own image simulation."""
    from lenstronomy.SimulationAPI.data_api import DataAPI

    return DataAPI(band.cutout_pixels, **band.lenstronomy_kwargs()).data_class


@functools.lru_cache(maxsize=32)
def _exposure(band: Band) -> Any:
    """lenstronomy's noise model of a band as observed (sky, read noise, Poisson)."""
    from lenstronomy.SimulationAPI.observation_api import SingleBand

    return SingleBand(**band.lenstronomy_kwargs())


def counts_per_second(band: Band, magnitude: float | np.ndarray) -> np.ndarray:
    """Flux (e-/s) of AB magnitude(s) in a band."""
    from lenstronomy.Util.data_util import magnitude2cps

    return np.asarray(magnitude2cps(np.asarray(magnitude, dtype=float), band.zero_point))


def weighted_sum(weights: np.ndarray, images: np.ndarray) -> np.ndarray:
    """sum_k weights[k] * images[k] for images (k, ny, nx), as one matrix-vector product."""
    return (weights @ images.reshape(len(weights), -1)).reshape(images.shape[1:])


def block_mean(images: np.ndarray, block: int) -> np.ndarray:
    """Means over ``block`` x ``block`` pixel blocks of the last two axes (strided sums: ten
    times faster than a reshaped mean)."""
    rows = functools.reduce(np.add, [images[..., i::block, :] for i in range(block)])
    return functools.reduce(np.add, [rows[..., i::block] for i in range(block)]) / block**2


def laplacian(image: np.ndarray) -> np.ndarray:
    """Five-point Laplacian in pixel units (edges replicated)."""
    padded = np.pad(image, 1, mode="edge")
    return padded[:-2, 1:-1] + padded[2:, 1:-1] + padded[1:-1, :-2] + padded[1:-1, 2:] - 4 * image


class AdaptiveSampler:
    """Pixel means of surface brightness on one band's grid: the pixel centre everywhere,
    ``factor`` x ``factor`` sub-pixels where centre sampling would be wrong by more than
    ``tolerance`` (in the units of the weighted image, see ``average``)."""

    def __init__(self, band: Band, factor: int, tolerance: float) -> None:
        grid = pixel_grid(band)
        self.band = band
        self.factor = int(factor)
        self.tolerance = float(tolerance)
        x, y = grid.pixel_coordinates
        self.x, self.y = np.asarray(x, dtype=float), np.asarray(y, dtype=float)
        self.shape = self.x.shape
        # sub-pixel offsets (a symmetric pattern: the grid's axis directions do not matter)
        steps = (np.arange(self.factor) - (self.factor - 1) / 2) * band.pixel_scale / self.factor
        self._dx = np.tile(steps, self.factor)
        self._dy = np.repeat(steps, self.factor)

    def subpixels(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Sub-pixel positions of the flat pixel ``index``: arrays (pixels, factor**2)."""
        xs = self.x.ravel()[index, None] + self._dx[None, :]
        ys = self.y.ravel()[index, None] + self._dy[None, :]
        return xs, ys

    def near(
        self,
        centres: np.ndarray,
        radius: np.ndarray,
        positions: tuple[np.ndarray, np.ndarray] | None = None,
    ) -> Any:
        """Pixels whose position lies within ``radius`` of any of ``centres``: the pixel centre,
        or ``positions`` (x, y) per pixel, e.g. where the lens maps it on the source plane."""
        mask = np.zeros(self.shape, dtype=bool)
        x, y = positions if positions is not None else (self.x, self.y)
        for (cx, cy), r in zip(centres, radius, strict=True):
            if positions is None:  # the axis-aligned grid itself: the box from its axes
                box: Any = np.ix_(
                    np.flatnonzero(np.abs(self.y[:, 0] - cy) < r),
                    np.flatnonzero(np.abs(self.x[0] - cx) < r),
                )
            else:
                box = (np.abs(x - cx) < r) & (np.abs(y - cy) < r)
            mask[box] |= np.hypot(x[box] - cx, y[box] - cy) < r  # exact, on the box only
        return mask

    def average(
        self,
        centre_values: np.ndarray,
        evaluate_subpixels: Callable[[np.ndarray], np.ndarray],
        weights: np.ndarray,
        must: np.ndarray | None = None,
    ) -> np.ndarray:
        """Per-profile pixel means, shape (profiles, ny, nx).

        ``centre_values``: unit responses at pixel centres (profiles, ny, nx), contiguous;
        overwritten with the means where sub-pixels are used;
        ``evaluate_subpixels(index)``: unit responses at those pixels' sub-pixels
        (profiles, pixels, factor**2); ``weights``: each profile's amplitude in the units the
        tolerance is in (the error estimate is for the weighted sum, the image one sees);
        ``must``: pixels to supersample regardless.
        """
        values = centre_values
        if self.factor == 1 or values.shape[0] == 0:
            return values
        image = weighted_sum(weights, values)
        flagged = np.abs(laplacian(image)) / 24.0 > self.tolerance
        if must is not None:
            flagged |= must
        if not flagged.any():
            return values
        from scipy.ndimage import binary_dilation

        flagged = binary_dilation(flagged)  # the estimate is itself sampled at centres
        index = np.flatnonzero(flagged)
        means = evaluate_subpixels(index).mean(axis=2)
        values.reshape(values.shape[0], -1)[:, index] = means  # a fresh array: fill in place
        return values


class Deflector:
    """The lens equation on a sampler's grid, solved once per lens galaxy: source-plane
    positions of pixel centres, and of sub-pixels as they are asked for (kept)."""

    def __init__(self, scene: Scene, sampler: AdaptiveSampler) -> None:
        self.model = lens_model(scene.lens_models)
        self.kwargs = list(scene.lens_kwargs)
        self.sampler = sampler
        self.centres = self.model.ray_shooting(sampler.x, sampler.y, self.kwargs)
        n, k = sampler.x.size, sampler.factor**2
        self._sub_x = np.full((n, k), np.nan)
        self._sub_y = np.full((n, k), np.nan)
        self._done = np.zeros(n, dtype=bool)

    def subpixels(self, index: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        todo = index[~self._done[index]]
        if todo.size:
            xs, ys = self.sampler.subpixels(todo)
            bx, by = self.model.ray_shooting(xs.ravel(), ys.ravel(), self.kwargs)
            self._sub_x[todo] = bx.reshape(xs.shape)
            self._sub_y[todo] = by.reshape(xs.shape)
            self._done[todo] = True
        return self._sub_x[index], self._sub_y[index]


class LightGroup:
    """lenstronomy's light model of a list of profiles, evaluated at unit amplitude."""

    def __init__(self, lights: Sequence[Light]) -> None:
        from lenstronomy.LightModel.light_model import LightModel

        self.lights = list(lights)
        self.model = LightModel([light.profile for light in self.lights])
        self.kwargs = [{**light.shape, "amp": 1.0} for light in self.lights]
        # flux of each profile at amplitude 1, to turn magnitudes into amplitudes
        self.unit_flux = np.array(self.model.total_flux(self.kwargs, norm=True), dtype=float)

    def __len__(self) -> int:
        return len(self.lights)

    def __call__(self, x: np.ndarray, y: np.ndarray) -> np.ndarray:
        """Unit responses (profiles, *x.shape); compact profiles (Gaussians, stamps) only where
        they are not zero to double precision (``Light.reach``)."""
        shape = np.shape(x)
        # float32: profiles evaluate ~3x faster (less memory traffic) at 1e-7 relative error
        x, y = np.ravel(x).astype(np.float32), np.ravel(y).astype(np.float32)
        out = np.zeros((len(self), x.size), dtype=np.float32)
        wide = [i for i, light in enumerate(self.lights) if not math.isfinite(light.reach)]
        if wide:
            responses, _ = self.model.functions_split(x, y, self.kwargs, k=wide)
            out[wide] = responses
        for i, light in enumerate(self.lights):
            if i in wide:
                continue
            (cx, cy), reach = light.centre, light.reach
            inside = np.flatnonzero((np.abs(x - cx) < reach) & (np.abs(y - cy) < reach))
            if inside.size:
                responses, _ = self.model.functions_split(x[inside], y[inside], self.kwargs, k=i)
                out[i, inside] = responses[0]
        return out.reshape(len(self), *shape)

    def amplitudes(self, band: Band) -> np.ndarray:
        """lenstronomy amplitudes that give each profile its magnitude in ``band``."""
        mags = np.array([light.mags[band.name] for light in self.lights])
        return counts_per_second(band, mags) / self.unit_flux

    def compact(self, pixel_scale: float) -> tuple[np.ndarray, np.ndarray]:
        """Centres and radii of the profiles smaller than ``COMPACT_PIXELS`` pixels."""
        small = [light for light in self.lights if light.size < COMPACT_PIXELS * pixel_scale]
        centres = np.array([light.centre for light in small]).reshape(-1, 2)
        radii = np.array([light.size + pixel_scale for light in small])
        return centres, radii


class SceneRenderer:
    """One scene, under one object's observing conditions, in every band of a survey.

    Light is evaluated on the reference band's grid and kept, so measuring the catalogue row
    (reference band) and writing every band share the work; a new source drawn behind the same
    galaxy re-evaluates only the source, through the kept deflections.
    """

    def __init__(
        self,
        scene: Scene,
        survey: Survey,
        supersampling: int = SimulateConfig.supersampling,
        tolerance: float = SimulateConfig.supersampling_tolerance,
        observing: Observing = NOMINAL,
    ) -> None:
        self.scene = scene
        self.survey = survey
        self.observing = observing
        self.reference = survey.band(survey.reference_band)
        self._factor, self._tolerance = supersampling, tolerance
        self._samplers: dict[str, AdaptiveSampler] = {}
        self._deflectors: dict[str, Deflector] = {}
        self._cache: dict[tuple[str, str, str], Any] = {}  # (group, what, band)
        self._source_lights: list[Light] | None = None

    # ------------------------------------------------------------------ sampling

    def observed(self, band: Band) -> Band:
        return self.observing.band(band)

    def background_noise(self, band: Band | None = None) -> float:
        return float(_exposure(self.observed(band or self.reference)).background_noise)

    def flux(self, magnitude: float, band: Band | None = None) -> float:
        """Total flux (e-/s) of an object of this AB magnitude."""
        return float(counts_per_second(band or self.reference, magnitude))

    def _tiling(self, band: Band) -> tuple[int, int] | None:
        """(block, offset) when ``band``'s pixels are exact blocks of reference pixels."""
        ref = self.reference
        block = round(band.pixel_scale / ref.pixel_scale)
        offset2 = ref.cutout_pixels - block * band.cutout_pixels
        if block < 1 or abs(block * ref.pixel_scale - band.pixel_scale) > 1e-9 * block:
            return None
        if offset2 < 0 or offset2 % 2:
            return None
        return block, offset2 // 2

    def _sampler(self, band: Band) -> AdaptiveSampler:
        if band.name not in self._samplers:
            tolerance = self._tolerance * self.background_noise(band) / band.pixel_scale**2
            self._samplers[band.name] = AdaptiveSampler(band, self._factor, tolerance)
        return self._samplers[band.name]

    def _deflector(self, band: Band) -> Deflector:
        if band.name not in self._deflectors:
            self._deflectors[band.name] = Deflector(self.scene, self._sampler(band))
        return self._deflectors[band.name]

    def _refresh_source(self) -> None:
        """Forget the source's images once the scene has a new source (a redraw)."""
        if self.scene.source is not self._source_lights:
            self._cache = {k: v for k, v in self._cache.items() if k[0] != "source"}
            self._source_lights = self.scene.source

    def _cached(self, key: tuple[str, str, str], make: Callable[[], Any]) -> Any:
        if key not in self._cache:
            self._cache[key] = make()
        return self._cache[key]

    def _light_group(self, group: str) -> LightGroup:
        return self._cached((group, "lights", ""), lambda: LightGroup(getattr(self.scene, group)))

    def _unit_images(self, group: str, band: Band) -> np.ndarray:
        """Unit-amplitude pixel means of a group's profiles on ``band``'s sampling grid."""
        lights = self._light_group(group)
        return self._cached((group, "units", band.name), lambda: self._sample(group, lights, band))

    def _sample(self, group: str, lights: LightGroup, band: Band) -> np.ndarray:
        sampler = self._sampler(band)
        weights = lights.amplitudes(band)
        centres, radii = lights.compact(band.pixel_scale)
        if group == "source" and self.scene.lens_models:
            deflector = self._deflector(band)
            bx, by = deflector.centres
            must = sampler.near(centres, radii, (bx, by))

            def subpixels(index: np.ndarray) -> np.ndarray:
                return lights(*deflector.subpixels(index))

            return sampler.average(lights(bx, by), subpixels, weights, must)
        must = sampler.near(centres, radii)
        return sampler.average(
            lights(sampler.x, sampler.y),
            lambda index: lights(*sampler.subpixels(index)),
            weights,
            must,
        )

    def _band_units(self, group: str, band: Band) -> np.ndarray:
        """Unit images on ``band``'s own grid: sampled there, or block means of the reference
        sampling when the band tiles it (computed once for all bands of that block size)."""
        tiling = self._tiling(band)
        if tiling is None or band.name == self.reference.name:
            return self._unit_images(group, band)
        units = self._unit_images(group, self.reference)
        block, offset = tiling
        n = band.cutout_pixels

        def block_means() -> np.ndarray:
            cut = units[:, offset : offset + block * n, offset : offset + block * n]
            return block_mean(cut, block)

        return self._cached((group, f"blocks{block}+{offset}", str(n)), block_means)

    def _group_sky(self, group: str, band: Band) -> np.ndarray:
        """A group's noise-free, unconvolved light in ``band`` (e-/s per pixel)."""
        if not getattr(self.scene, group):
            return np.zeros((band.cutout_pixels,) * 2)
        amplitudes = self._light_group(group).amplitudes(band)
        return weighted_sum(amplitudes, self._band_units(group, band)) * band.pixel_scale**2

    def _psf(self, band: Band) -> np.ndarray:
        """The object's PSF kernel in ``band`` (made once)."""
        return self._cached(("psf", "kernel", band.name), lambda: self.observing.psf_kernel(band))

    def _convolve(self, image: np.ndarray, band: Band) -> np.ndarray:
        """``scipy.signal.fftconvolve(image, psf, mode="same")``, with the PSF's transform
        computed once per band (every component of every source tried shares it)."""
        from scipy import fft

        kernel = self._psf(band)
        full = [a + b - 1 for a, b in zip(image.shape, kernel.shape, strict=True)]
        shape = [fft.next_fast_len(size, real=True) for size in full]
        transform = self._cached(("psf", "transform", band.name), lambda: fft.rfft2(kernel, shape))
        convolved = fft.irfft2(fft.rfft2(image, shape) * transform, shape)
        start = [(f - a) // 2 for f, a in zip(full, image.shape, strict=True)]
        return convolved[start[0] : start[0] + image.shape[0], start[1] : start[1] + image.shape[1]]

    # ------------------------------------------------------------------ components

    def component(self, group: str, band: Band | None = None) -> np.ndarray:
        """One of ``COMPONENTS``: noise-free and PSF-convolved, in e-/s per pixel."""
        band = band or self.reference
        if group == "stars":
            return self._stars(band)
        if group not in COMPONENTS:
            raise ValueError(f"unknown component {group!r}; known: {COMPONENTS}")
        self._refresh_source()
        return self._cached(
            (group, "convolved", band.name),
            lambda: self._convolve(self._group_sky(group, band), band),
        )

    def central(self, band: Band | None = None) -> np.ndarray:
        return self.component("central", band)

    def source(self, band: Band | None = None) -> np.ndarray:
        return self.component("source", band)

    def _stars(self, band: Band) -> np.ndarray:
        """Point sources: the band's PSF kernel placed with a sub-pixel shift (lenstronomy's
        ``add_layer2image``, as its point-source rendering does)."""
        from lenstronomy.Util.image_util import add_layer2image

        n = band.cutout_pixels
        image = np.zeros((n, n))
        if not self.scene.stars:
            return image
        grid = pixel_grid(band)
        kernel = self._psf(band)
        for star in self.scene.stars:
            col, row = grid.map_coord2pix(star.x, star.y)
            image = add_layer2image(image, col, row, self.flux(star.mags[band.name], band) * kernel)
        return image

    def noise(self, band: Band, model: np.ndarray, seed: int) -> np.ndarray:
        """lenstronomy's exposure noise model (sky and read noise, Gaussian-approximated
        Poisson noise of the source counts) as one normal draw per pixel: the sum of the two
        independent Gaussians lenstronomy draws, from numpy's faster generator."""
        exposure = _exposure(self.observed(band))
        sigma = np.sqrt(exposure.background_noise**2 + exposure.flux_noise(model) ** 2)
        return np.random.default_rng(seed).standard_normal(model.shape) * sigma

    def render(self, band: Band | None = None, noise_seed: int | None = None) -> BandImages:
        """All components; with a seed, also the observed image (sky, read and Poisson noise
        from lenstronomy's exposure model, then the object's noise texture)."""
        band = band or self.reference
        components = {name: self.component(name, band) for name in COMPONENTS}
        images = BandImages(self.observed(band), components, self.background_noise(band))
        if noise_seed is not None:
            model = images.model
            images.image = model + self.observing.texture(self.noise(band, model, noise_seed))
            images.image = images.image.astype(np.float32)
        return images
