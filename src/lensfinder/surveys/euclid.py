"""Euclid VIS and NISP (Y, J, H) as seen in the Bologna Lens Finding Challenge 2 cutouts.

Observing numbers are lenstronomy 1.14.2's ``SimulationAPI.ObservationConfig.Euclid`` (which cites
Euclid Collaboration 2024, arXiv:2405.13496, 2405.13501, 2405.13493), wide survey, 6-year coadd.
Pixel scale of VIS is the challenge's 0.1"/px (lenstronomy: 0.101"), cutouts 200x200 (VIS) and
66x66 (NISP) as in the challenge data. 5-sigma point-source depths: Scaramella et al. 2022
(A&A 662, A112): VIS 26.2, Y/J/H 24.5. Pivot wavelengths: Euclid Collaboration 2022.
"""

from typing import Any

from lensfinder.surveys.base import Band, Survey

_NISP: dict[str, Any] = {
    "instrument": "NISP",
    "pixel_scale": 0.3,
    "cutout_pixels": 66,
    "exposure_time": 87.2,
}
_NISP_CAMERA: dict[str, Any] = {
    "num_exposures": 4,
    "read_noise": 6.1,
    "gain": 3.1,
}

VIS = Band(
    name="VIS",
    instrument="VIS",
    pixel_scale=0.1,
    cutout_pixels=200,
    psf_fwhm=0.16,
    zero_point=25.72,
    exposure_time=566.0,
    num_exposures=4,
    sky_brightness=22.3,
    read_noise=4.2,
    gain=3.1,
    wavelength_um=0.72,
    directory="EUC_VIS",
)
Y = Band(
    name="Y",
    psf_fwhm=0.48,
    zero_point=25.04,
    sky_brightness=22.1,
    wavelength_um=1.08,
    directory="EUC_Y",
    **_NISP,
    **_NISP_CAMERA,
)
J = Band(
    name="J",
    psf_fwhm=0.49,
    zero_point=25.26,
    sky_brightness=22.2,
    wavelength_um=1.37,
    directory="EUC_J",
    **_NISP,
    **_NISP_CAMERA,
)
H = Band(
    name="H",
    psf_fwhm=0.50,
    zero_point=25.21,
    sky_brightness=22.3,
    wavelength_um=1.77,
    directory="EUC_H",
    **_NISP,
    **_NISP_CAMERA,
)

EUCLID = Survey(name="euclid", bands=(VIS, Y, J, H), reference_band="VIS")
