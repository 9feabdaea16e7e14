"""Survey and band descriptions as frozen data, so another survey is one more module."""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class Band:
    """One photometric band of one instrument, as observed in a cutout.

    Units: ``pixel_scale`` and ``psf_fwhm`` in arcsec, ``exposure_time`` in seconds per exposure,
    ``sky_brightness`` in AB mag/arcsec^2, ``zero_point`` in AB mag for 1 e-/s,
    ``read_noise`` in e- per exposure, ``gain`` in e-/ADU.
    """

    name: str
    instrument: str
    pixel_scale: float
    cutout_pixels: int
    psf_fwhm: float
    zero_point: float
    exposure_time: float
    num_exposures: int
    sky_brightness: float
    read_noise: float
    gain: float
    wavelength_um: float
    directory: str  # folder name in the challenge layout, e.g. "EUC_VIS"

    def __post_init__(self) -> None:
        for field in ("pixel_scale", "psf_fwhm", "exposure_time", "gain", "wavelength_um"):
            if not getattr(self, field) > 0:
                raise ValueError(f"band {self.name}: {field} must be positive")
        if self.cutout_pixels < 8 or self.num_exposures < 1 or self.read_noise < 0:
            raise ValueError(f"band {self.name}: invalid cutout size, exposures or read noise")

    @property
    def total_exposure(self) -> float:
        """Total exposure time in seconds."""
        return self.exposure_time * self.num_exposures

    @property
    def psf_sigma_pixels(self) -> float:
        """Gaussian PSF sigma in this band's pixels."""
        return self.psf_fwhm / (2.0 * math.sqrt(2.0 * math.log(2.0))) / self.pixel_scale

    def lenstronomy_kwargs(self) -> dict[str, float | int | str]:
        """Keyword arguments for lenstronomy's ``SimAPI(kwargs_single_band=...)``."""
        return {
            "read_noise": self.read_noise,
            "pixel_scale": self.pixel_scale,
            "ccd_gain": self.gain,
            "exposure_time": self.exposure_time,
            "sky_brightness": self.sky_brightness,
            "magnitude_zero_point": self.zero_point,
            "num_exposures": self.num_exposures,
            "seeing": self.psf_fwhm,
            "psf_type": "GAUSSIAN",
        }


@dataclass(frozen=True)
class Survey:
    """A set of bands imaged for each object; ``bands`` is in model-channel order."""

    name: str
    bands: tuple[Band, ...]
    reference_band: str  # the band whose grid models work on (highest resolution)

    def band(self, name: str) -> Band:
        for band in self.bands:
            if band.name == name:
                return band
        raise ValueError(f"survey {self.name} has no band {name!r}; bands: {self.band_names}")

    @property
    def band_names(self) -> tuple[str, ...]:
        return tuple(b.name for b in self.bands)
