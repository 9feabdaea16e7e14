"""Colour composites and PNG mosaics: any flux units, colours that mean something, bad input."""

from __future__ import annotations

import numpy as np
import pytest
from matplotlib.image import imread

from lensfinder.presentation.composite import (
    asinh_stretch,
    colour_composite,
    in_noise_units,
    robust_background,
    save_grid,
)


def blob(shape: tuple[int, int], x: float, y: float, sigma: float) -> np.ndarray:
    """A Gaussian at fractional (x, y) of the image, sigma as a fraction of the side."""
    rows, cols = np.mgrid[0 : shape[0], 0 : shape[1]] / np.array(shape).reshape(2, 1, 1)
    return np.exp(-((cols - x) ** 2 + (rows - y) ** 2) / (2 * sigma**2))


def scene(seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """A red galaxy at the left (bright in H, faint in VIS), a blue one at the right."""
    rng = np.random.default_rng(seed)
    red_vis, blue_vis = 20 * blob((200, 200), 0.3, 0.5, 0.03), 60 * blob((200, 200), 0.7, 0.5, 0.03)
    vis = red_vis + blue_vis + rng.normal(0, 1, (200, 200))
    nisp = np.stack(
        [
            w_red * 60 * blob((66, 66), 0.3, 0.5, 0.04) + 8 * blob((66, 66), 0.7, 0.5, 0.04)
            for w_red in (0.6, 0.8, 1.0)
        ]
    )
    nisp += rng.normal(0, 1, nisp.shape)
    return vis, nisp


def test_composite_shape_and_type():
    vis, nisp = scene()
    image = colour_composite(vis, nisp)
    assert image.shape == (200, 200, 3) and image.dtype == np.uint8
    assert image.max() > 200  # bright objects reach the top of the range
    assert np.median(image) < 40  # the sky stays dark


def test_composite_does_not_depend_on_flux_units():
    vis, nisp = scene()
    reference = colour_composite(vis, nisp).astype(int)
    # the challenge's tiny arbitrary units, with a different scale per band and an offset
    scaled = colour_composite(
        vis * 3e-11 + 1e-12, nisp * np.array([2e-9, 1e-9, 5e-10])[:, None, None]
    )
    assert np.abs(scaled.astype(int) - reference).max() <= 1


def test_composite_colours_red_and_blue_galaxies():
    image = colour_composite(*scene()).astype(int)
    red, blue = image[100, 60], image[100, 140]
    assert red[0] > red[2] + 20  # red galaxy: more red than blue
    assert blue[2] > blue[0] + 20  # blue galaxy: more blue than red


def test_composite_of_noise_is_grey_and_dark():
    rng = np.random.default_rng(1)
    image = colour_composite(rng.normal(0, 1, (200, 200)), rng.normal(0, 1, (3, 66, 66)))
    means = image.reshape(-1, 3).mean(axis=0)
    assert means.max() - means.min() < 3 and means.max() < 60


def test_composite_survives_blank_nan_and_bad_shapes():
    blank = colour_composite(np.zeros((50, 50)), np.zeros((3, 17, 17)))
    assert blank.shape == (50, 50, 3) and blank.max() == 0
    vis, nisp = scene()
    vis[10:20, 10:20] = np.nan
    nisp[2, 0, :] = np.inf
    image = colour_composite(vis, nisp)
    assert image.shape == (200, 200, 3)
    with pytest.raises(ValueError, match="nisp"):
        colour_composite(vis, nisp[:2])


def test_robust_background_ignores_sources():
    rng = np.random.default_rng(2)
    image = 5.0 + rng.normal(0, 2.0, (100, 100)) + 1e4 * blob((100, 100), 0.5, 0.5, 0.02)
    level, sigma = robust_background(image)
    assert level.shape == image.shape and np.allclose(level, 5.0, atol=0.3)
    assert sigma == pytest.approx(2.0, rel=0.15)
    # a tilted sky (as the model input measures it): taken out of the picture, not read as noise
    tilted = image + np.linspace(-4.0, 4.0, 100)[None, :]
    level, sigma = robust_background(tilted)
    assert sigma == pytest.approx(2.0, rel=0.15)
    assert np.abs(in_noise_units(tilted) - in_noise_units(image)).mean() < 0.1
    stretched = asinh_stretch(image)
    assert stretched.min() >= 0 and stretched.max() == 1.0


def test_save_grid_writes_a_png_mosaic(tmp_path):
    vis, nisp = scene()
    images = [colour_composite(vis, nisp), vis, colour_composite(vis, nisp)]
    path = save_grid(images, ["a", "b", "c"], tmp_path / "sub" / "grid.png", columns=2)
    assert path.is_file()
    pixels = imread(path)
    height, width = pixels.shape[:2]
    assert height > width * 0.8  # two rows of two columns
    assert pixels[..., :3].std() > 0.05  # not blank
    with pytest.raises(ValueError, match="titles"):
        save_grid(images, ["a"], tmp_path / "bad.png")
    assert not (tmp_path / "bad.png").exists()


def test_nisp_lands_where_the_sky_puts_it_on_the_vis_grid():
    """A NISP point 17.5 pixels (5.25") right of centre sits 52.5 VIS pixels right of the VIS
    centre, as in the model input: true pixel scales, not 19.8" stretched to 20"."""
    from lensfinder.presentation.composite import _on_vis_grid

    nisp = np.zeros((1, 66, 66))
    nisp[0, 32, 50] = 1.0  # centre of the 66-px grid is at 32.5
    picture = _on_vis_grid(nisp, 200)[0]
    columns = picture.sum(axis=0)
    centroid = float((np.arange(200) * columns).sum() / columns.sum())
    assert centroid == pytest.approx(99.5 + 52.5, abs=0.05)


def test_numpy_noise_and_resampler_give_the_model_inputs_floats():
    """The pictures' numpy estimator and resampler (``data.pixels``) against the model input's
    torch ones (``data.transforms``): one noise level and one NISP grid for picture and model."""
    import torch

    from lensfinder.data import pixels, transforms

    rng = np.random.default_rng(3)
    images = rng.normal(5.0, 2.0, (4, 3, 64, 64)).astype(np.float32)
    images[0, 0] += 1e4 * blob((64, 64), 0.1, 0.1, 0.05)  # a companion in the frame: clipped
    images[1, 1, :3, :] = np.nan  # a masked edge
    images[1, 2, 5, 5] = np.inf
    images[2, 0] = 7.0  # constant: no measurable noise
    images[3, 1] = np.nan  # nothing at all
    sky_np, sigma_np = pixels.background_and_noise(images)
    sky_t, sigma_t = transforms.background_and_noise(torch.from_numpy(images))
    np.testing.assert_array_equal(sky_np[..., 0], sky_t[..., 0, 0].numpy())
    np.testing.assert_array_equal(sigma_np[..., 0], sigma_t[..., 0, 0].numpy())
    assert sigma_np[0, 0, 0] == pytest.approx(2.0, rel=0.15)  # the companion did not count

    nisp = rng.normal(0, 1, (3, 66, 66)).astype(np.float32)
    on_grid = pixels.resample_nisp(nisp, 200, 20.0)
    expected = transforms.resample_nisp(torch.from_numpy(nisp)[None], 200, 20.0)[0].numpy()
    # torch computes the sampling positions in float32: equal up to that rounding
    np.testing.assert_allclose(on_grid, expected, atol=1e-4)


def test_pictures_and_the_grading_server_start_without_torch():
    """Drawing a gallery or serving the grading page never loads torch (seconds of start-up)."""
    import subprocess
    import sys

    pictures = "lensfinder.presentation." + ", lensfinder.presentation.".join(
        ("composite", "gallery", "failures", "plots", "preview", "report")
    )
    for modules in (pictures, "lensfinder.scan.gallery", "lensfinder.inspection.app"):
        code = f"import sys, {modules}; print('torch' in sys.modules)"
        out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
        assert out.returncode == 0, out.stderr
        assert out.stdout.strip() == "False", modules
