import pytest
import torch

from train.config import load_preset
from vqvae import DiscreteVAE
from vqvae.losses import kl_uniform
from vqvae.relaxation import gumbel_softmax, relax, straight_through



@pytest.mark.parametrize("kind", ["gumbel", "straight_through"])
def test_gradients_reach_the_encoder(kind):
    cfg = load_preset("tiny", [f"vqvae.relaxation={kind}"]).vqvae
    torch.manual_seed(0)
    model = DiscreteVAE(cfg)
    images = torch.rand(2, 3, 16, 16)
    out = model(images, 0.5)
    # Only the reconstruction term: its gradient must pass through the relaxation.
    model.likelihood.nll(images, out.params).backward()
    first_conv = model.encoder.blocks[0].weight
    head = model.encoder.head[-1].weight
    assert first_conv.grad is not None and float(first_conv.grad.abs().sum()) > 0
    assert head.grad is not None and float(head.grad.abs().sum()) > 0


def test_gumbel_softmax_is_a_distribution_and_sharpens():
    logits = torch.randn(2, 8, 3, 3)
    z = gumbel_softmax(logits, 1.0)
    torch.testing.assert_close(z.sum(dim=1), torch.ones(2, 3, 3))
    assert float(z.min()) >= 0
    cold = gumbel_softmax(logits, 1e-3, noise=False)
    assert torch.equal(cold.argmax(dim=1), logits.argmax(dim=1))
    assert float(cold.max(dim=1).values.min()) > 0.99


def test_straight_through_is_hard_forward_soft_backward():
    logits = torch.randn(2, 8, 3, 3, requires_grad=True)
    z = straight_through(logits, 1.0)
    assert set(z.detach().unique().tolist()) <= {0.0, 1.0}
    torch.testing.assert_close(z.sum(dim=1), torch.ones(2, 3, 3))
    (z * torch.randn_like(z)).sum().backward()
    assert float(logits.grad.abs().sum()) > 0


def test_noise_is_reproducible_with_a_generator_and_absent_without_noise():
    logits = torch.randn(1, 8, 2, 2)
    a = relax("gumbel", logits, 1.0, generator=torch.Generator().manual_seed(3))
    b = relax("gumbel", logits, 1.0, generator=torch.Generator().manual_seed(3))
    c = relax("gumbel", logits, 1.0, generator=torch.Generator().manual_seed(4))
    assert torch.equal(a, b) and not torch.equal(a, c)
    torch.testing.assert_close(relax("gumbel", logits, 1.0, noise=False), logits.softmax(dim=1))


def test_bad_relaxation_arguments():
    with pytest.raises(ValueError, match="temperature"):
        gumbel_softmax(torch.zeros(1, 2, 1, 1), 0.0)
    with pytest.raises(ValueError, match="unknown relaxation"):
        relax("vq", torch.zeros(1, 2, 1, 1), 1.0)


def test_kl_term_has_gradient():
    logits = torch.randn(2, 8, 3, 3, requires_grad=True)
    kl_uniform(logits).backward()
    assert float(logits.grad.abs().sum()) > 0
