"""Render a scene in one band with lenstronomy: noise-free components, then the exposure's noise.

Each band gets its own pixel grid, Gaussian PSF and exposure model from the survey table
(``Band.lenstronomy_kwargs`` -> ``SimAPI``), so VIS and NISP show one sky at their own resolution.
Supersampling is adaptive: only pixels near sharp structure (arcs, cores, knots) are supersampled,
which keeps flux right for 0.05" sources at a fifth of the cost of supersampling everything. The
same factor serves NISP, where compact sources are even less resolved by 0.3" pixels.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from lensfinder.simulate.observing import NOMINAL, Observing
from lensfinder.simulate.scene import Scene
from lensfinder.surveys import Band

COMPONENTS = ("central", "field", "source", "stars")


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
    import lenstronomy.Data.psf
    import lenstronomy.ImSim.image_model
    import lenstronomy.LensModel.Solver.lens_equation_solver
    import lenstronomy.SimulationAPI.sim_api
    import lenstronomy.Util.kernel_util  # noqa: F401


class BandRenderer:
    """lenstronomy's image model for one scene in one band."""

    def __init__(
        self, scene: Scene, band: Band, supersampling: int = 1, observing: Observing = NOMINAL
    ) -> None:
        from lenstronomy.Data.psf import PSF
        from lenstronomy.ImSim.image_model import ImageModel
        from lenstronomy.SimulationAPI.sim_api import SimAPI

        self.scene = scene
        self.observing = observing
        nominal, self.band = band, observing.band(band)
        band = self.band
        lights = scene.central + scene.field
        kwargs_model = {
            "lens_model_list": list(scene.lens_models),
            "source_light_model_list": [light.profile for light in scene.source],
            "lens_light_model_list": [light.profile for light in lights],
            "point_source_model_list": ["UNLENSED"] if scene.stars else [],
        }
        self.sim = SimAPI(band.cutout_pixels, band.lenstronomy_kwargs(), kwargs_model)
        data = self.sim.data_class
        # A pixel kernel (Gaussian or Moffat): lenstronomy's adaptive supersampling does not take
        # an analytic PSF, and Moffat wings need a kernel anyway.
        psf = PSF(psf_type="PIXEL", kernel_point_source=observing.psf_kernel(nominal))
        numerics: dict[str, object] = {"supersampling_factor": 1}
        if supersampling > 1:
            numerics = {
                "supersampling_factor": int(supersampling),
                "compute_mode": "adaptive",
                "supersampled_indexes": self._sharp_mask(data.pixel_coordinates),
                "supersampling_convolution": False,
            }
        self.image_model = ImageModel(
            data,
            psf,
            self.sim.lens_model_class,
            self.sim.source_model_class,
            self.sim.lens_light_model_class,
            self.sim.point_source_model_class if scene.stars else None,
            kwargs_numerics=numerics,
        )
        stars = None
        if scene.stars:
            stars = [
                {
                    "ra_image": np.array([s.x for s in scene.stars]),
                    "dec_image": np.array([s.y for s in scene.stars]),
                    "magnitude": np.array([s.mags[band.name] for s in scene.stars]),
                }
            ]
        self.kwargs_light, self.kwargs_source, self.kwargs_stars = self.sim.magnitude2amplitude(
            [light.kwargs(band.name) for light in lights],
            [light.kwargs(band.name) for light in scene.source],
            stars,
        )
        self.n_central = len(scene.central)
        self._source: np.ndarray | None = None
        self._central: np.ndarray | None = None
        self.n_field = len(scene.field)

    def _sharp_mask(self, coordinates: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """Pixels within the scene's sharp regions (the grid is axis-aligned: rows are y)."""
        x, y = coordinates
        columns, rows = x[0], y[:, 0]
        mask = np.zeros(x.shape, dtype=bool)
        for cx, cy, radius in self.scene.sharp_regions():
            col = np.flatnonzero(np.abs(columns - cx) < radius)
            row = np.flatnonzero(np.abs(rows - cy) < radius)
            if col.size and row.size:
                box = np.ix_(row, col)
                mask[box] |= np.hypot(x[box] - cx, y[box] - cy) < radius
        return mask

    @property
    def background_noise(self) -> float:
        return float(self.sim.background_noise)

    def flux(self, magnitude: float) -> float:
        """Total flux (e-/s) of an object of this AB magnitude in this band."""
        return float(self.sim.magnitude2cps(magnitude))

    def _blank(self) -> np.ndarray:
        n = self.band.cutout_pixels
        return np.zeros((n, n))

    def central(self) -> np.ndarray:
        """The central galaxy (kept, and settable: the redraw loop measures it once per galaxy
        and hands it on, since it does not depend on the source)."""
        if self._central is None:
            self._central = self.image_model.lens_surface_brightness(
                self.kwargs_light, k=list(range(self.n_central))
            )
        return self._central

    def use_central(self, central: np.ndarray) -> None:
        self._central = central

    def field(self) -> np.ndarray:
        if not self.n_field:
            return self._blank()
        k = list(range(self.n_central, self.n_central + self.n_field))
        return self.image_model.lens_surface_brightness(self.kwargs_light, k=k)

    def source(self) -> np.ndarray:
        """The lensed source (kept: the label check and the final image both need it)."""
        if self._source is None:
            if not self.scene.source:
                self._source = self._blank()
            else:
                self._source = self.image_model.source_surface_brightness(
                    self.kwargs_source, self.scene.lens_kwargs or None
                )
        return self._source

    def stars(self) -> np.ndarray:
        if not self.scene.stars:
            return self._blank()
        return self.image_model.point_source(self.kwargs_stars)

    def render(self, noise_seed: int | None = None) -> BandImages:
        """All components; with a seed, also the observed image (sky, read and Poisson noise
        from the exposure model, via ``SimAPI.noise_for_model``)."""
        components = {name: getattr(self, name)() for name in COMPONENTS}
        images = BandImages(self.band, components, self.background_noise)
        if noise_seed is not None:
            model = images.model
            noise = self.observing.texture(self.sim.noise_for_model(model, seed=noise_seed))
            images.image = (model + noise).astype(np.float32)
        return images
