"""The image tokenizer: DALL·E's discrete VAE (plain torch)."""
from vqvae.config import VQVAEConfig
from vqvae.losses import (LossTerms, elbo_loss, kl_uniform, logit_laplace_nll, map_pixels, mse_nll,
                          psnr, reconstruction_loss, unmap_pixels)
from vqvae.model import DiscreteVAE, VQVAEOutput
from vqvae.registry import IMAGE_TOKENIZERS, load_image_tokenizer
from vqvae.relaxation import gumbel_softmax, relax, straight_through

__all__ = [
    "VQVAEConfig", "DiscreteVAE", "VQVAEOutput", "relax", "gumbel_softmax", "straight_through",
    "LossTerms", "elbo_loss", "kl_uniform", "logit_laplace_nll", "mse_nll", "reconstruction_loss",
    "map_pixels", "unmap_pixels", "psnr", "IMAGE_TOKENIZERS", "load_image_tokenizer",
]
