"""Reconstruction quality of a dVAE: PSNR, codebook usage and code perplexity on held-out images.

``dalle vqvae eval SHARDS... --vqvae DIR`` reads each source (a shard, a folder of
shards or a pattern) through the training decode path, encodes every image to
hard codes, decodes them and reports per source and over all sources:

- PSNR (dB) of the hard-code reconstruction, the mean over images of
  ``10 log10(1 / MSE)`` with pixels in [0, 1] (the tokenizer as the transformer
  uses it: argmax codes, no relaxation);
- codebook usage: the share of the ``vocab_size`` codes that occur at least once;
- code perplexity: ``exp(entropy)`` of the code histogram;
- bits per image: ``h * w * log2(vocab_size)``, the fixed-length size of the codes.

With ``out_dir`` a PNG of originals over reconstructions is written per source.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from train.config import DataConfig
from train.data.loader import image_dataset, make_loader


def load_images(source: Any, resolution: int, max_images: int, *, batch_size: int = 64,
                background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """Up to ``max_images`` images of a source, decoded as for training: (N, 3, R, R) float in [0, 1]."""
    cfg = DataConfig(resolution=resolution, num_workers=0, shuffle_buffer=0, background=list(background))
    stream = image_dataset(source if isinstance(source, list) else [source], cfg, batch_size=batch_size,
                           train=False, rank=0, world_size=1)
    out: list[torch.Tensor] = []
    n = 0
    for batch in make_loader(stream, 0):
        out.append(batch["images"])
        n += batch["images"].shape[0]
        if n >= max_images:
            break
    if not out:
        raise ValueError(f"no readable images in {source}")
    return torch.cat(out)[:max_images]


@torch.no_grad()
def _reconstruct(vqvae: Any, batches: Iterable[torch.Tensor],
                 device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image PSNR (N,), all codes (N*h*w,) and the reconstructions (N, 3, R, R), on the CPU."""
    psnrs, codes, recons = [], [], []
    for xb in batches:
        xb = xb.to(device)
        tokens = vqvae.encode(xb)                                                     # (B, h, w)
        rec = vqvae.decode(tokens).float().clamp(0, 1)                                # (B, 3, R, R)
        mse = ((rec - xb.float()) ** 2).flatten(1).mean(1).clamp_min(1e-10)
        psnrs.append((10 * torch.log10(1.0 / mse)).cpu())
        codes.append(tokens.flatten().cpu())
        recons.append(rec.cpu())
    if not psnrs:
        raise ValueError("no images to evaluate")
    return torch.cat(psnrs), torch.cat(codes), torch.cat(recons)


def _summarise(psnrs: torch.Tensor, codes: torch.Tensor, cfg: Any) -> dict[str, float]:
    counts = torch.bincount(codes, minlength=cfg.vocab_size).double()
    p = counts[counts > 0] / counts.sum()
    return {"images": len(psnrs), "psnr_db": float(psnrs.mean()),
            "codebook_usage": float((counts > 0).sum() / cfg.vocab_size),
            "code_perplexity": math.exp(float(-(p * p.log()).sum())),
            "bits_per_image": cfg.grid_size ** 2 * math.log2(cfg.vocab_size)}


def recon_metrics(vqvae: Any, batches: Iterable[torch.Tensor],
                  device: str | torch.device = "cpu") -> tuple[dict[str, float], torch.Tensor]:
    """Metrics of hard-code reconstructions over image batches, and the reconstructions (on the CPU).

    Args:
        vqvae: a :class:`vqvae.model.DiscreteVAE` (eval mode).
        batches: (B, 3, R, R) float tensors in [0, 1].
        device: where to run the model.
    Returns:
        ``({"images", "psnr_db", "codebook_usage", "code_perplexity", "bits_per_image"}, reconstructions)``.
    """
    psnrs, codes, recons = _reconstruct(vqvae, batches, device)
    return _summarise(psnrs, codes, vqvae.config), recons


def evaluate_sources(vqvae: Any, sources: Mapping[str, Any], *, max_images: int = 256,
                     batch_size: int = 64, device: str | torch.device = "cpu",
                     out_dir: str | Path | None = None) -> dict[str, dict[str, float]]:
    """Reconstruction metrics per named source and over all of them (key ``"all"``).

    Args:
        vqvae: the dVAE (eval mode).
        sources: name -> shard source.
        max_images: images read per source.
        batch_size: images per forward pass.
        device: where to run the model.
        out_dir: if given, ``recon_<name>.png`` (8 originals over their reconstructions) per source.
    """
    from train.vqvae_module import save_grid_atomic

    report: dict[str, dict[str, float]] = {}
    all_psnrs, all_codes = [], []
    for name, source in sources.items():
        x = load_images(source, vqvae.config.resolution, max_images, batch_size=batch_size)
        psnrs, codes, rec = _reconstruct(vqvae, x.split(batch_size), device)
        report[name] = _summarise(psnrs, codes, vqvae.config)
        all_psnrs.append(psnrs)
        all_codes.append(codes)
        if out_dir is not None:
            save_grid_atomic(x[:8], rec[:8], Path(out_dir) / f"recon_{name}.png")
    if len(sources) > 1:
        report["all"] = _summarise(torch.cat(all_psnrs), torch.cat(all_codes), vqvae.config)
    return report


def to_markdown(report: Mapping[str, Mapping[str, float]]) -> str:
    """One table row per source."""
    rows = ["| source | images | PSNR (dB) | codebook usage | code perplexity | bits per image |",
            "|---|---|---|---|---|---|"]
    for name, m in report.items():
        rows.append(f"| {name} | {m['images']} | {m['psnr_db']:.2f} | {m['codebook_usage']:.3f} | "
                    f"{m['code_perplexity']:.1f} | {m['bits_per_image']:.0f} |")
    return "\n".join(rows) + "\n"
