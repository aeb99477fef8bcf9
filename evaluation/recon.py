"""Reconstruction quality of a dVAE: PSNR, codebook usage and code perplexity on held-out images.

``dalle vqvae eval SHARDS... --vqvae DIR`` reads each source (a shard, a folder of
shards or a pattern) through the training decode path (``train.data.images``; this
module takes the decoded images and imports no training code), encodes every image to
hard codes, decodes them and reports per source and over all sources:

- PSNR (dB) of the hard-code reconstruction, the mean over images of
  ``10 log10(1 / MSE)`` with pixels in [0, 1] (the tokenizer as the transformer
  uses it: argmax codes, no relaxation);
- codebook usage: the share of the ``vocab_size`` codes that occur at least once;
- code perplexity: ``exp(entropy)`` of the code histogram (these three: :mod:`vqvae.metrics`, as
  the training logs compute them);
- bits per image: ``h * w * log2(vocab_size)``, the fixed-length size of the codes;
- the checker ceiling, for sources whose samples carry their truth (the built-in
  scenes and signs): the share of reconstructions that :func:`evaluation.checker.check`
  passes. No transformer built on the tokenizer can pass more of its own samples
  than the tokenizer can represent, so this is a hard ceiling on every pass@k;
  the share of originals that pass is reported beside it.

With ``out_dir`` a PNG of originals over reconstructions (upscaled x4, nearest
neighbour) is written per source.
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Any, Iterable, Mapping

import torch

from dalle.images import save_recon_grid
from dalle.pipeline import tensor_to_pil
from evaluation.checker import check
from vqvae.metrics import code_perplexity, codebook_usage, psnr_per_image

GRID_IMAGES = 8
GRID_SCALE = 4


def checker_pass_rate(images: torch.Tensor, descriptions: list[dict[str, Any]]) -> float:
    """Share of ``images`` (N, 3, R, R) in [0, 1] that the checker passes against their descriptions."""
    if len(descriptions) != images.shape[0] or not descriptions:
        raise ValueError(f"need one description per image, got {len(descriptions)} for {images.shape[0]}")
    return sum(check(im, d).passed for im, d in zip(tensor_to_pil(images), descriptions)) / len(descriptions)


@torch.no_grad()
def _reconstruct(vqvae: Any, batches: Iterable[torch.Tensor],
                 device: str | torch.device) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Per-image PSNR (N,), all codes (N*h*w,) and the reconstructions (N, 3, R, R), on the CPU."""
    psnrs, codes, recons = [], [], []
    for xb in batches:
        xb = xb.to(device)
        tokens = vqvae.encode(xb)                                                     # (B, h, w)
        rec = vqvae.decode(tokens).float().clamp(0, 1)                                # (B, 3, R, R)
        psnrs.append(psnr_per_image(xb, rec).cpu())
        codes.append(tokens.flatten().cpu())
        recons.append(rec.cpu())
    if not psnrs:
        raise ValueError("no images to evaluate")
    return torch.cat(psnrs), torch.cat(codes), torch.cat(recons)


def _summarise(psnrs: torch.Tensor, codes: torch.Tensor, cfg: Any) -> dict[str, float]:
    counts = torch.bincount(codes, minlength=cfg.vocab_size).double()
    return {"images": len(psnrs), "psnr_db": float(psnrs.mean()),
            "codebook_usage": float(codebook_usage(counts)),
            "code_perplexity": float(code_perplexity(counts)),
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


def evaluate_sources(vqvae: Any, sources: Mapping[str, torch.Tensor], *, batch_size: int = 64,
                     device: str | torch.device = "cpu", out_dir: str | Path | None = None,
                     descriptions: Mapping[str, list[dict[str, Any]] | None] | None = None,
                     ) -> dict[str, dict[str, float]]:
    """Reconstruction metrics per named source and over all of them (key ``"all"``).

    Args:
        vqvae: the image tokenizer (eval mode).
        sources: name -> its images, (N, 3, R, R) float in [0, 1].
        batch_size: images per forward pass.
        device: where to run the model.
        out_dir: if given, ``recon_<name>.png`` (8 originals over their reconstructions, x4) per source.
        descriptions: name -> the checker's description of each image (None where there is no truth);
            sources with descriptions get ``checker_ceiling`` and ``checker_originals``.
    """
    report: dict[str, dict[str, float]] = {}
    all_psnrs, all_codes = [], []
    for name, x in sources.items():
        psnrs, codes, rec = _reconstruct(vqvae, x.split(batch_size), device)
        report[name] = _summarise(psnrs, codes, vqvae.config)
        desc = (descriptions or {}).get(name)
        if desc is not None:
            report[name]["checker_ceiling"] = checker_pass_rate(rec, desc)
            report[name]["checker_originals"] = checker_pass_rate(x, desc)
        all_psnrs.append(psnrs)
        all_codes.append(codes)
        if out_dir is not None:
            up = lambda t: torch.nn.functional.interpolate(t[:GRID_IMAGES].float(), scale_factor=GRID_SCALE,  # noqa: E731
                                                          mode="nearest")
            save_recon_grid(up(x), up(rec), Path(out_dir) / f"recon_{name}.png")
    if len(sources) > 1:
        report["all"] = _summarise(torch.cat(all_psnrs), torch.cat(all_codes), vqvae.config)
    return report


def to_markdown(report: Mapping[str, Mapping[str, float]]) -> str:
    """One table row per source."""
    rows = ["| source | images | checker ceiling (originals) | PSNR (dB) | codebook usage | code perplexity "
            "| bits per image |", "|---|---|---|---|---|---|---|"]
    for name, m in report.items():
        ceiling = (f"{m['checker_ceiling']:.3f} ({m['checker_originals']:.3f})" if "checker_ceiling" in m
                   else "-")
        rows.append(f"| {name} | {m['images']} | {ceiling} | {m['psnr_db']:.2f} | {m['codebook_usage']:.3f} | "
                    f"{m['code_perplexity']:.1f} | {m['bits_per_image']:.0f} |")
    return "\n".join(rows) + "\n"
