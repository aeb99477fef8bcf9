"""The public Python API: one object per trained model, loaded once and used many times.

    from dalle import Dalle
    model = Dalle.from_pretrained()                 # the shipped model; or a bundle directory
    images = model.generate(["a red circle"], n=4, seed=0, temperature=0.7)
    images[0].image.save("circle.png")              # a PIL image; .seed and .score come with it

Image ``index`` of ``prompt`` in a run seeded with ``seed`` uses the row seed
``image_seed(seed, prompt, index)``, so it is the same image whatever ``n``,
``batch_size`` or the other prompts are. With ``candidates=M`` the run draws
candidates ``0 .. M-1`` per prompt and keeps the ``n`` best by the scorer; each kept
:class:`~dalle.pipeline.Generation` still carries its candidate ``index`` and seed,
which regenerate it.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from PIL import Image
from torch import nn

from dalle.bundle import BundleError, check_compatible, load_bundle, save_bundle
from dalle.config import DalleConfig
from dalle.model import DalleTransformer
from dalle.options import SamplingOptions
from dalle.pipeline import Generation, keep_count, prepare_image, tensor_to_pil
from dalle.rerank import Candidates, PmiRerank, get_scorer, needs_images, resolve_auto
from dalle.scorer import ImageTextRerank, ImageTextScorer, attach_scorer, check_scorer, load_bundle_scorer
from dalle.sampler import image_seed, sample
from dalle.tokenizer import TextTokenizer

log = logging.getLogger(__name__)

Progress = bool | Callable[[int, int], None]


def resolve_device(device: str | torch.device) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; a device that is not there is a ValueError."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(device)
    except (RuntimeError, TypeError) as e:
        raise ValueError(f"unknown device {device!r}: {e}") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"device {device} was asked for but no CUDA GPU is available")
    return device


class Dalle:
    """A text-to-image model: transformer, image tokenizer and text tokenizer together.

    Each config has one home: ``model.config`` (the transformer), ``image_tokenizer.config``
    (``vocab_size``, ``grid_size``, ``resolution``); the tokenizer is a :class:`TextTokenizer`.
    Generation runs where the models are and never moves them.

    Args:
        model: a ``DalleTransformer``.
        image_tokenizer: an image tokenizer with ``encode`` / ``decode`` and that config.
        tokenizer: the caption tokenizer the transformer was trained with.
        meta: free-form facts about the model (training steps, data), saved in ``bundle.json``.
        path: the directory it was loaded from, if any.
        scorer: the model's image-caption scorer (``scorer="clip"``), trained with ``tokenizer``;
            one that reads another tokenizer, caption length or resolution is refused.
    """

    def __init__(self, model: DalleTransformer, image_tokenizer: nn.Module, tokenizer: TextTokenizer, *,
                 meta: dict | None = None, path: Path | None = None, scorer: ImageTextScorer | None = None) -> None:
        check_compatible(model.config, image_tokenizer.config)
        self.model, self.image_tokenizer, self.tokenizer = model, image_tokenizer, tokenizer
        self.meta = dict(meta or {})
        self.path = path
        try:
            self.sampling = SamplingOptions.recommended(self.meta.get("sampling"))
        except ValueError as e:
            raise BundleError(f"{path or 'the model'}: bundle.json meta.sampling: {e}") from None
        self.scorer: ImageTextScorer | None = None
        if scorer is not None:
            self.set_scorer(scorer)

    # ---- loading and saving ---------------------------------------------------------------
    @classmethod
    def from_pretrained(cls, path: str | Path | None = None, device: str | torch.device = "auto") -> "Dalle":
        """Load a model bundle directory (None: the model shipped with the package).

        Args:
            path: the bundle directory written by :meth:`save` or ``dalle train``.
            device: ``auto`` (CUDA when available), ``cpu``, ``cuda`` or any torch device.
        Raises:
            dalle.bundle.BundleError: missing, corrupt or mismatched files (one line).
            ValueError: a device that is not available.
        """
        device = resolve_device(device)
        parts = load_bundle(path, device=device)
        scorer = load_bundle_scorer(parts.path, tokenizer_sha256=parts.tokenizer.sha256,
                                    text_len=parts.tokenizer.text_len, text_vocab_size=parts.tokenizer.vocab_size,
                                    resolution=parts.image_tokenizer.config.resolution, device=device)
        return cls(parts.model, parts.image_tokenizer, parts.tokenizer, meta=parts.meta, path=parts.path,
                   scorer=scorer)

    def save(self, directory: str | Path, *, model_card: str | None = None, weights_dtype: str = "float32") -> Path:
        """Write the model as a bundle directory that :meth:`from_pretrained` reads back (its scorer too).

        ``weights_dtype="float16"`` halves the transformer's weights file (read back as float32)."""
        out = save_bundle(directory, model=self.model, vqvae=self.image_tokenizer,
                          tokenizer_path=self.tokenizer.path, lowercase=self.tokenizer.lowercase,
                          meta=self.meta, model_card=model_card, weights_dtype=weights_dtype)
        if self.scorer is not None:
            attach_scorer(out, self.scorer)
        return out

    def set_sampling_defaults(self, **settings: Any) -> "Dalle":
        """Recommend sampling settings (``temperature``, ``top_k``, ``top_p``, ``guidance``) for this model:
        :meth:`generate`, :meth:`edit`, ``dalle generate``, ``dalle serve`` and ``dalle eval`` use them
        unless told otherwise, and :meth:`save` stores them in ``bundle.json``. None removes one."""
        merged = {**(self.meta.get("sampling") or {}), **settings}
        merged = {k: v for k, v in merged.items() if v is not None}
        self.sampling = SamplingOptions.recommended(merged)
        self.meta["sampling"] = merged
        return self

    def set_scorer(self, scorer: ImageTextScorer | str | Path) -> "Dalle":
        """Use ``scorer`` (an :class:`ImageTextScorer` or its directory) as this model's ``"clip"`` scorer.

        Raises:
            dalle.scorer.ScorerError: a scorer trained with another tokenizer (sha256), another caption
                length or for another resolution.
        """
        where = "the scorer"
        if not isinstance(scorer, ImageTextScorer):
            where = str(scorer)
            scorer = ImageTextScorer.from_checkpoint(scorer, device=self.device)
        check_scorer(scorer, tokenizer_sha256=self.tokenizer.sha256, text_len=self.tokenizer.text_len,
                     text_vocab_size=self.tokenizer.vocab_size, resolution=self.resolution, where=where)
        self.scorer = scorer.eval()
        return self

    def to(self, device: str | torch.device) -> "Dalle":
        """Move both models to ``device`` (the only method that moves them)."""
        device = resolve_device(device)
        self.model.to(device)
        self.image_tokenizer.to(device)
        if self.scorer is not None:
            self.scorer.to(device)
        return self

    def scorers(self) -> dict[str, Any]:
        """This model's own reranking scorers by name: ``"pmi"`` (the transformer's caption-image
        pointwise mutual information, :class:`dalle.rerank.PmiRerank`) and ``"clip"`` when it has an
        image-caption scorer."""
        own: dict[str, Any] = {"pmi": PmiRerank(self.model, self.tokenizer.null_tokens)}
        if self.scorer is not None:
            own["clip"] = ImageTextRerank(self.scorer)
        return own

    def resolve_scorer(self, scorer: str | Callable) -> str | Callable:
        """The scorer ``"auto"`` stands for on this model (``"clip"`` when it has a scorer, else
        ``"logprob"``); any other scorer unchanged."""
        return resolve_auto(scorer, self.scorers())

    # ---- facts ----------------------------------------------------------------------------
    @property
    def config(self) -> DalleConfig:
        """The transformer's config (caption length, code grid, vocabularies)."""
        return self.model.config

    @property
    def resolution(self) -> int:
        """Side of the generated images in pixels."""
        return self.image_tokenizer.config.resolution

    @property
    def device(self) -> torch.device:
        """Where the transformer is (generation runs there)."""
        return next(self.model.parameters()).device

    def __repr__(self) -> str:
        c = self.config
        return (f"Dalle({self.path or 'unsaved'}: {self.resolution}px, {c.image_grid}x{c.image_grid} codes of "
                f"{c.image_vocab_size}, {c.n_layer} layers, on {self.device})")

    # ---- generation -----------------------------------------------------------------------
    def generate(self, prompts: Sequence[str] | str, n: int = 4, seed: int = 0, *,
                 options: SamplingOptions | None = None, progress: Progress = False,
                 **sampling: Any) -> list[Generation]:
        """Generate ``n`` images per prompt.

        Args:
            prompts: a caption or a list of captions.
            n: images kept per prompt.
            seed: run seed; image ``index`` of ``prompt`` uses ``image_seed(seed, prompt, index)``.
            options: :class:`SamplingOptions` (None: :attr:`sampling`, the bundle's recommended
                settings over the defaults); keyword ``sampling`` options (``temperature``,
                ``top_k``, ``top_p``, ``guidance``, ``candidates``, ``batch_size``, ``scorer``,
                ``dtype``, ``compile``, ``use_cache``) override its fields.
            progress: True: a tqdm bar; a callable gets ``(codes_done, codes_total)`` over the run.
        Returns:
            ``len(prompts) * n`` generations grouped by prompt, best first when reranking,
            otherwise in index order.
        Raises:
            ValueError: an invalid option or prompt.
        """
        opts = SamplingOptions.of(self.sampling if options is None else options, **sampling)
        return self._run(_check_prompts(prompts), None, n=n, seed=seed, opts=opts, progress=progress)

    def edit(self, image: Image.Image | str | Path | torch.Tensor, prompt: str, *, keep_rows: int | None = None,
             keep_fraction: float | None = None, n: int = 4, seed: int = 0, options: SamplingOptions | None = None,
             progress: Progress = False, **sampling: Any) -> list[Generation]:
        """Zero-shot editing: keep the top of ``image``, regenerate the rest for ``prompt``.

        The image is resized and centre-cropped to :attr:`resolution` and encoded; the first
        ``keep_rows`` code rows (or the first ``round(keep_fraction * image_len)`` codes in
        raster order) are kept and the rest is sampled. The kept region is decoded from the
        kept codes, so it matches the input's reconstruction there (up to the decoder's
        receptive field at the seam).

        Args:
            image: a PIL image, a path, or a (3, H, W) float tensor in [0, 1].
            prompt: the caption of the whole edited image.
            keep_rows / keep_fraction: exactly one; how much to keep.
            Other arguments as in :meth:`generate`.
        Returns:
            ``n`` generations.
        """
        cfg = self.config
        k = keep_count(cfg.image_len, cfg.image_grid, keep_rows, keep_fraction)
        opts = SamplingOptions.of(self.sampling if options is None else options, **sampling)
        if not isinstance(prompt, str):
            raise ValueError("edit takes one prompt string")
        pixels = prepare_image(image, self.resolution).to(self._image_device())    # (1, 3, R, R)
        with torch.inference_mode():
            codes = self.image_tokenizer.encode(pixels)                            # (1, h, w)
        prefix = codes.reshape(1, -1)[:, :k].cpu()                                 # (1, k)
        return self._run(_check_prompts([prompt]), prefix, n=n, seed=seed, opts=opts, progress=progress)

    def _image_device(self) -> torch.device:
        return next(self.image_tokenizer.parameters()).device

    def _run(self, prompts: list[str], prefix: torch.Tensor | None, *, n: int, seed: int, opts: SamplingOptions,
             progress: Progress) -> list[Generation]:
        if isinstance(n, bool) or not isinstance(n, int) or n < 1:
            raise ValueError(f"n must be an integer >= 1, got {n!r}")
        if isinstance(seed, bool) or not isinstance(seed, int) or not 0 <= seed < 2**63:
            raise ValueError(f"seed must be an integer in [0, 2**63), got {seed!r}")
        if opts.candidates is not None and opts.candidates < n:
            raise ValueError(f"candidates must be >= n ({n}), got {opts.candidates}")
        score_fn = get_scorer(opts.scorer, bound=self.scorers())
        m = opts.candidates or n
        jobs = [(prompt, i, image_seed(seed, prompt, i)) for prompt in prompts for i in range(m)]
        positions = self.config.image_len - (0 if prefix is None else prefix.size(1))
        text_all, codes_all, logprobs_all = [], [], []
        for start in range(0, len(jobs), opts.batch_size):
            chunk = jobs[start:start + opts.batch_size]
            step_progress = progress
            if callable(progress):   # codes sampled so far in the whole run, of all of them
                def step_progress(done: int, _total: int, start: int = start, b: int = len(chunk)) -> None:
                    progress(start * positions + b * done, len(jobs) * positions)
            text = self.tokenizer.encode([job[0] for job in chunk])                   # (b, text_len)
            out = sample(self.model, text, seeds=[job[2] for job in chunk],
                         null_text_tokens=self.tokenizer.null_tokens(len(chunk)),
                         prefix_image_tokens=None if prefix is None else prefix.expand(len(chunk), -1),
                         options=opts, progress=step_progress)
            text_all.append(text)
            codes_all.append(out.image_tokens.cpu())
            logprobs_all.append(out.logprobs.cpu())
        cands = Candidates(prompts=[job[0] for job in jobs], text_tokens=torch.cat(text_all),
                           image_tokens=torch.cat(codes_all), logprobs=torch.cat(logprobs_all))
        if needs_images(score_fn):
            cands.images = self.decode(cands.image_tokens, batch_size=opts.batch_size)
        scores = torch.as_tensor(score_fn(cands), dtype=torch.float32).flatten().cpu()
        if scores.numel() != len(jobs):
            raise RuntimeError(f"scorer returned {scores.numel()} scores for {len(jobs)} candidates")

        kept: list[int] = []
        for p_idx in range(len(prompts)):
            rows = list(range(p_idx * m, (p_idx + 1) * m))
            if opts.candidates is not None:   # best n, ties broken by candidate index
                rows = sorted(rows, key=lambda r: (-float(scores[r]), r))[:n]
            kept.extend(rows)
        if cands.images is not None:
            images = cands.images[kept]
        else:
            images = self.decode(cands.image_tokens[kept], batch_size=opts.batch_size)
        pil = tensor_to_pil(images)
        return [Generation(prompt=jobs[r][0], index=jobs[r][1], seed=jobs[r][2], image=pil[i],
                           image_tokens=cands.image_tokens[r].clone(), score=float(scores[r]))
                for i, r in enumerate(kept)]

    @torch.inference_mode()
    def decode(self, image_tokens: torch.Tensor, *, batch_size: int = 16) -> torch.Tensor:
        """Codes (N, image_len) -> images (N, 3, R, R) in [0, 1] on CPU, decoded in batches."""
        device = self._image_device()
        parts = [self.image_tokenizer.decode(image_tokens[i:i + batch_size].to(device)).float().cpu()
                 for i in range(0, image_tokens.size(0), batch_size)]
        return torch.cat(parts)


def _check_prompts(prompts: Sequence[str] | str) -> list[str]:
    if isinstance(prompts, str):
        prompts = [prompts]
    prompts = list(prompts)
    if not prompts or not all(isinstance(p, str) for p in prompts):
        raise ValueError("prompts must be a non-empty list of strings")
    return prompts
