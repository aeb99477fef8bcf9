"""The image tokenizer: DALL·E's discrete VAE (plain torch)."""
from vqvae.config import VQVAEConfig
from vqvae.losses import (LIKELIHOODS, LossTerms, PixelLikelihood, elbo_loss, kl_uniform, logit_laplace_nll,
                          map_pixels, mse_nll, pixel_likelihood, unmap_pixels)
from vqvae.metrics import psnr
from vqvae.model import DiscreteVAE, VQVAEOutput
from vqvae.registry import IMAGE_TOKENIZERS, load_image_tokenizer
from vqvae.relaxation import gumbel_softmax, relax, straight_through

__all__ = [
    "VQVAEConfig", "DiscreteVAE", "VQVAEOutput", "relax", "gumbel_softmax", "straight_through",
    "LossTerms", "elbo_loss", "kl_uniform", "logit_laplace_nll", "mse_nll", "PixelLikelihood", "LIKELIHOODS",
    "pixel_likelihood", "map_pixels", "unmap_pixels", "psnr", "IMAGE_TOKENIZERS", "load_image_tokenizer",
]
