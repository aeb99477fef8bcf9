"""Prompt-level generation and zero-shot editing on top of the token-level sampler.

Image ``index`` of ``prompt`` in a run seeded with ``seed`` uses the row seed
``image_seed(seed, prompt, index)``, so it is the same image whatever ``n``,
``batch_size`` or the other prompts are. With ``candidates=M`` the run draws
candidates ``0 .. M-1`` per prompt and keeps the ``n`` best by the scorer; each
kept :class:`Generation` still carries its candidate ``index`` and seed, which
regenerate it.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image

from dalle.rerank import Candidates, get_scorer, needs_images
from dalle.sampler import check_sampling_options, image_seed, sample

log = logging.getLogger(__name__)


@dataclass
class Generation:
    """One generated image."""

    prompt: str
    index: int                  # candidate index: image_seed(seed, prompt, index) regenerates it
    seed: int                   # the row seed image_seed(seed, prompt, index)
    image: Image.Image
    image_tokens: torch.Tensor  # (image_len,) int64, on CPU
    score: float                # the scorer's value (mean code log-probability by default)


def check_generation_options(*, n: int, temperature: float, top_k: int | None, top_p: float | None,
                             guidance: float, candidates: int | None, batch_size: int) -> None:
    """Raise ValueError with one clear message for an invalid option."""
    if int(n) != n or n < 1:
        raise ValueError(f"n must be an integer >= 1, got {n}")
    check_sampling_options(temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance)
    if candidates is not None and (int(candidates) != candidates or candidates < n):
        raise ValueError(f"candidates must be an integer >= n ({n}), got {candidates}")
    if int(batch_size) != batch_size or batch_size < 1:
        raise ValueError(f"batch_size must be an integer >= 1, got {batch_size}")


def tensor_to_pil(images: torch.Tensor) -> list[Image.Image]:
    """(B, 3, R, R) floats in [0, 1] -> RGB PIL images."""
    arr = (images.detach().float().clamp(0, 1) * 255).round().to(torch.uint8)      # (B, 3, R, R)
    arr = arr.permute(0, 2, 3, 1).cpu().numpy()                                    # (B, R, R, 3)
    return [Image.fromarray(a) for a in arr]


def prepare_image(image: Image.Image | str | Path | torch.Tensor, resolution: int) -> torch.Tensor:
    """An image (PIL, path, or (3, H, W) / (1, 3, H, W) tensor in [0, 1]) -> (1, 3, R, R) in [0, 1].

    PIL images are composited on white, resized so the shorter side is R (bicubic) and centre-cropped.
    """
    if isinstance(image, torch.Tensor):
        x = image[None] if image.ndim == 3 else image
        if x.ndim != 4 or x.shape[:2] != (1, 3) or not x.is_floating_point():
            raise ValueError(f"expected a float image tensor (3, H, W) in [0, 1], got {tuple(image.shape)}")
        image = tensor_to_pil(x)[0]
    if isinstance(image, (str, Path)):
        path = Path(image)
        if not path.is_file():
            raise ValueError(f"image file not found: {path}")
        try:
            image = Image.open(path)
            image.load()
        except OSError as e:
            raise ValueError(f"cannot read image {path}: {e}") from None
    if not isinstance(image, Image.Image):
        raise ValueError(f"expected a PIL image, a path or a tensor, got {type(image).__name__}")
    if image.mode in ("RGBA", "LA", "P"):
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    image = image.convert("RGB")
    w, h = image.size
    scale = resolution / min(w, h)
    nw, nh = max(resolution, round(w * scale)), max(resolution, round(h * scale))
    image = image.resize((nw, nh), Image.BICUBIC)
    left, top = (nw - resolution) // 2, (nh - resolution) // 2
    image = image.crop((left, top, left + resolution, top + resolution))
    x = torch.frombuffer(bytearray(image.tobytes()), dtype=torch.uint8).view(resolution, resolution, 3)
    return (x.permute(2, 0, 1).float() / 255.0)[None]                             # (1, 3, R, R)


def _prepare(bundle: Any, device: str | torch.device | None) -> torch.device:
    """The device to run on; moves the bundle's models there when asked."""
    current = next(bundle.model.parameters()).device
    if device is None:
        return current
    device = torch.device(device)
    if device != current:
        bundle.model.to(device)
        bundle.vqvae.to(device)
    return device


def _run(bundle: Any, prompts: Sequence[str], prefix: torch.Tensor | None, *, n: int, seed: int,
         temperature: float, top_k: int | None, top_p: float | None, guidance: float, candidates: int | None,
         scorer: str | Callable, batch_size: int, device: str | torch.device | None,
         progress: bool) -> list[Generation]:
    check_generation_options(n=n, temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance,
                             candidates=candidates, batch_size=batch_size)
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    score_fn = get_scorer(scorer)
    device = _prepare(bundle, device)
    model, vqvae, tokenizer = bundle.model, bundle.vqvae, bundle.tokenizer
    m = candidates or n
    jobs = [(p_idx, prompt, i, image_seed(seed, prompt, i)) for p_idx, prompt in enumerate(prompts) for i in range(m)]
    text_all, codes_all, logprobs_all = [], [], []
    for start in range(0, len(jobs), batch_size):
        chunk = jobs[start:start + batch_size]
        text = tokenizer.encode([job[1] for job in chunk])                         # (b, text_len)
        out = sample(model, text, null_text_tokens=tokenizer.null_tokens(len(chunk)), guidance=guidance,
                     temperature=temperature, top_k=top_k, top_p=top_p, seeds=[job[3] for job in chunk],
                     prefix_image_tokens=None if prefix is None else prefix.expand(len(chunk), -1),
                     progress=progress)
        text_all.append(text)
        codes_all.append(out.image_tokens.cpu())
        logprobs_all.append(out.logprobs.cpu())
    cands = Candidates(prompts=[job[1] for job in jobs], text_tokens=torch.cat(text_all),
                       image_tokens=torch.cat(codes_all), logprobs=torch.cat(logprobs_all))
    if needs_images(score_fn):
        cands.images = _decode(vqvae, cands.image_tokens, device, batch_size).cpu()
    scores = torch.as_tensor(score_fn(cands), dtype=torch.float32).flatten().cpu()
    if scores.numel() != len(jobs):
        raise ValueError(f"scorer returned {scores.numel()} scores for {len(jobs)} candidates")

    kept: list[int] = []
    for p_idx in range(len(prompts)):
        rows = list(range(p_idx * m, (p_idx + 1) * m))
        if candidates is not None:   # best n, ties broken by candidate index
            rows = sorted(rows, key=lambda r: (-float(scores[r]), r))[:n]
        kept.extend(rows)
    if cands.images is not None:
        images = cands.images[kept]
    else:
        images = _decode(vqvae, cands.image_tokens[kept], device, batch_size)
    pil = tensor_to_pil(images)
    return [Generation(prompt=jobs[r][1], index=jobs[r][2], seed=jobs[r][3], image=pil[i],
                       image_tokens=cands.image_tokens[r].clone(), score=float(scores[r]))
            for i, r in enumerate(kept)]


@torch.inference_mode()
def _decode(vqvae: Any, image_tokens: torch.Tensor, device: torch.device, batch_size: int) -> torch.Tensor:
    """Codes (N, image_len) -> images (N, 3, R, R) in [0, 1], decoded in batches."""
    parts = [vqvae.decode(image_tokens[i:i + batch_size].to(device)).float()
             for i in range(0, image_tokens.size(0), batch_size)]
    return torch.cat(parts)


def generate(bundle: Any, prompts: Sequence[str] | str, *, n: int = 1, seed: int = 0, temperature: float = 1.0,
             top_k: int | None = None, top_p: float | None = None, guidance: float = 1.0,
             candidates: int | None = None, scorer: str | Callable = "logprob", batch_size: int = 16,
             device: str | torch.device | None = None, progress: bool = False) -> list[Generation]:
    """Generate ``n`` images per prompt.

    Args:
        bundle: a ``dalle.bundle.Bundle`` (model, vqvae, tokenizer, ...).
        prompts: captions.
        n: images kept per prompt.
        seed: run seed; image ``index`` of ``prompt`` uses ``image_seed(seed, prompt, index)``.
        temperature, top_k, top_p, guidance: sampling options (see :func:`dalle.sampler.sample`).
        candidates: draw this many per prompt (>= n) and keep the n best by ``scorer``.
        scorer: a name in ``dalle.rerank.SCORERS`` or a callable.
        batch_size: rows sampled together (guidance doubles them internally).
        device: run there (moves the bundle's models); default: where the model is.
        progress: tqdm bar over code positions.
    Returns:
        ``len(prompts) * n`` generations, grouped by prompt, best first when reranking,
        otherwise in index order.
    """
    return _run(bundle, prompts, None, n=n, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                guidance=guidance, candidates=candidates, scorer=scorer, batch_size=batch_size, device=device,
                progress=progress)


def keep_count(image_len: int, image_grid: int, keep_rows: int | None, keep_fraction: float | None) -> int:
    """Number of leading codes (raster order) kept by an edit; raises ValueError when invalid."""
    if (keep_rows is None) == (keep_fraction is None):
        raise ValueError("edit needs exactly one of keep_rows or keep_fraction")
    if keep_rows is not None:
        if int(keep_rows) != keep_rows or not 0 <= keep_rows < image_grid:
            raise ValueError(f"keep_rows must be an integer in [0, {image_grid - 1}], got {keep_rows}")
        return int(keep_rows) * image_grid
    if not 0 <= keep_fraction < 1:
        raise ValueError(f"keep_fraction must be in [0, 1), got {keep_fraction}")
    k = round(keep_fraction * image_len)
    if k >= image_len:
        raise ValueError(f"keep_fraction {keep_fraction} keeps all {image_len} codes; nothing to sample")
    return k


def edit(bundle: Any, image: Image.Image | str | Path | torch.Tensor, prompt: str, *, keep_rows: int | None = None,
         keep_fraction: float | None = None, n: int = 1, seed: int = 0, temperature: float = 1.0,
         top_k: int | None = None, top_p: float | None = None, guidance: float = 1.0,
         candidates: int | None = None, scorer: str | Callable = "logprob", batch_size: int = 16,
         device: str | torch.device | None = None, progress: bool = False) -> list[Generation]:
    """Zero-shot editing: keep the top of an image, regenerate the rest for ``prompt``.

    The image is resized and centre-cropped to the VQVAE resolution and encoded; the
    first ``keep_rows`` code rows (or the first ``round(keep_fraction * image_len)``
    codes in raster order) are kept and the region that extends to the bottom-right
    corner is sampled. The kept region is decoded from the kept codes, so it matches
    the input's reconstruction there (up to the decoder's receptive field at the seam).

    Args:
        bundle: a ``dalle.bundle.Bundle``.
        image: a PIL image, a path, or a (3, H, W) float tensor in [0, 1].
        prompt: the caption.
        keep_rows / keep_fraction: exactly one; how much to keep.
        Other options as in :func:`generate`.
    Returns:
        ``n`` generations.
    """
    cfg = bundle.model.config
    k = keep_count(cfg.image_len, cfg.image_grid, keep_rows, keep_fraction)
    check_generation_options(n=n, temperature=temperature, top_k=top_k, top_p=top_p, guidance=guidance,
                             candidates=candidates, batch_size=batch_size)
    if not isinstance(prompt, str):
        raise ValueError("edit takes one prompt string")
    dev = _prepare(bundle, device)
    resolution = bundle.vqvae_config.resolution
    with torch.inference_mode():
        codes = bundle.vqvae.encode(prepare_image(image, resolution).to(dev))       # (1, h, w)
    prefix = codes.reshape(1, -1)[:, :k].cpu()                                     # (1, k)
    return _run(bundle, [prompt], prefix, n=n, seed=seed, temperature=temperature, top_k=top_k, top_p=top_p,
                guidance=guidance, candidates=candidates, scorer=scorer, batch_size=batch_size, device=dev,
                progress=progress)
