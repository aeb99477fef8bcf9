import math

import pytest
import torch

from vqvae.config import VQVAEConfig
from vqvae.losses import (LIKELIHOODS, elbo_loss, kl_uniform, logit_laplace_nll, map_pixels, mse_nll, pixel_likelihood,
                          unmap_pixels)
from vqvae.model import DiscreteVAE
from vqvae.metrics import psnr


def test_logit_laplace_matches_hand_computed_value():
    # Two pixels of one channel: x = 0.5 and x = 1.0, mapped to 0.5 and 0.9 (eps = 0.1).
    images = torch.tensor([0.5, 1.0]).view(1, 1, 1, 2)
    mu = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    log_scale = torch.tensor([0.0, math.log(2.0)]).view(1, 1, 1, 2)
    params = torch.cat([mu, log_scale], dim=1)
    # -log f = log(2b) + log x + log(1 - x) + |logit x - mu| / b
    first = math.log(2 * 1.0) + math.log(0.5) + math.log(0.5) + 0.0            # = -log 2
    second = math.log(2 * 2.0) + math.log(0.9) + math.log(0.1) + abs(math.log(9.0) - 1.0) / 2.0
    expected = (first + second) / 2
    assert abs(expected - (-0.558093)) < 1e-5                                    # by hand
    assert float(logit_laplace_nll(images, params)) == pytest.approx(expected, abs=1e-6)


def test_logit_laplace_is_minimised_at_the_pixel_logit():
    images = torch.rand(1, 3, 4, 4)
    x = map_pixels(images)
    best_mu = torch.log(x) - torch.log1p(-x)
    log_scale = torch.full_like(images, -1.0)
    best = logit_laplace_nll(images, torch.cat([best_mu, log_scale], 1))
    worse = logit_laplace_nll(images, torch.cat([best_mu + 0.1, log_scale], 1))
    assert float(best) < float(worse)


def test_logit_laplace_density_integrates_to_one():
    # exp(-nll) over the mapped pixel interval (eps, 1 - eps) ~= probability mass inside it.
    n = 200_000
    images = torch.linspace(0, 1, n).view(1, 1, 1, n)
    params = torch.cat([torch.full_like(images, 0.3), torch.full_like(images, -1.5)], 1)
    c = images.shape[1]
    x = map_pixels(images)
    mu, ls = params[:, :c], params[:, c:]
    logit_x = torch.log(x) - torch.log1p(-x)
    nll = math.log(2) + ls + torch.log(x) + torch.log1p(-x) + (logit_x - mu).abs() * torch.exp(-ls)
    assert float(nll.mean()) == pytest.approx(float(logit_laplace_nll(images, params)), rel=1e-5)
    mass = float(torch.trapezoid(torch.exp(-nll).flatten(), x.flatten()))
    b = math.exp(-1.5)
    cdf = lambda t: 0.5 * math.exp((t - 0.3) / b) if t < 0.3 else 1 - 0.5 * math.exp(-(t - 0.3) / b)
    expected = cdf(math.log(0.9 / 0.1)) - cdf(math.log(0.1 / 0.9))
    assert mass == pytest.approx(expected, rel=1e-3)


def test_pixel_map_round_trip_and_clamp():
    x = torch.rand(100)
    torch.testing.assert_close(unmap_pixels(map_pixels(x)), x)
    assert float(map_pixels(torch.tensor(0.0))) == pytest.approx(0.1)
    assert float(map_pixels(torch.tensor(1.0))) == pytest.approx(0.9)
    assert unmap_pixels(torch.tensor([0.0, 1.0])).tolist() == [0.0, 1.0]


def test_mse_and_dispatch():
    images = torch.tensor([0.0, 1.0]).view(1, 1, 1, 2)
    pred = torch.tensor([0.5, 0.5]).view(1, 1, 1, 2)
    assert float(mse_nll(images, pred)) == pytest.approx(0.25)
    assert float(pixel_likelihood("mse").nll(images, pred)) == pytest.approx(0.25)
    with pytest.raises(ValueError, match="unknown likelihood"):
        pixel_likelihood("bernoulli")
    with pytest.raises(ValueError, match="do not match"):
        logit_laplace_nll(images, pred)


def test_kl_to_uniform_endpoints():
    assert float(kl_uniform(torch.zeros(2, 16, 3, 3))) == pytest.approx(0.0, abs=1e-6)
    peaked = torch.full((1, 16, 1, 1), -1e4)
    peaked[:, 5] = 0
    assert float(kl_uniform(peaked)) == pytest.approx(math.log(16), rel=1e-5)


def test_elbo_normalisation_keeps_paper_beta_meaning():
    # 3x256x256 pixels, 32x32 positions: per-dimension loss = (sum nll + beta sum kl) / dims.
    recon, kl = torch.tensor(0.5), torch.tensor(2.0)
    dims, positions = 3 * 256 * 256, 32 * 32
    terms = elbo_loss(recon, kl, 6.6, n_pixel_dims=dims, n_positions=positions)
    expected = (0.5 * dims + 6.6 * 2.0 * positions) / dims
    assert float(terms.loss) == pytest.approx(expected)
    assert float(elbo_loss(recon, kl, 0.0, n_pixel_dims=dims, n_positions=positions).loss) == 0.5


def test_psnr():
    a = torch.zeros(2, 3, 4, 4)
    assert float(psnr(a, a + 0.1)) == pytest.approx(20.0, abs=1e-4)
    assert float(psnr(a, a)) > 90


@pytest.mark.parametrize("name", sorted(LIKELIHOODS))
def test_each_likelihood_has_its_loss_lowest_at_its_mean_and_shapes_the_model(name):
    lik = pixel_likelihood(name)
    x = torch.rand(2, 3, 4, 4, generator=torch.Generator().manual_seed(0)) * 0.8 + 0.1
    if name == "logit_laplace":                          # mu = logit of the mapped pixel, scale 1
        m = map_pixels(x)
        params = torch.cat([torch.log(m) - torch.log1p(-m), torch.zeros_like(x)], dim=1)
    else:
        params = x.clone()
    assert torch.allclose(lik.mean(params, 3), x, atol=1e-5)
    shifted = params.clone()
    shifted[:, :3] += 0.1
    assert float(lik.nll(x, params)) < float(lik.nll(x, shifted))
    model = DiscreteVAE(VQVAEConfig(resolution=8, n_hid=4, vocab_size=8, likelihood=name))
    assert model.likelihood is lik and model.decoder.head[-1].out_channels == lik.out_channels(3) == params.shape[1]
    assert VQVAEConfig.from_dict({"likelihood": name}).likelihood == name
