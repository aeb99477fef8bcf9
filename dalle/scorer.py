"""A small CLIP-style image-caption scorer: a conv image encoder and a transformer text encoder
over the caption tokenizer's ids, projected to one shared space (Radford et al. 2021, at toy scale).

Used to rerank sampled candidates (``scorer="clip"``): each candidate's score is the
cosine similarity of its decoded image and its caption in the shared space.

Contract:

- ``encode_images(images (B, 3, R, R) in [0, 1]) -> (B, D)`` and
  ``encode_text(text_tokens (B, text_len)) -> (B, D)``, both L2-normalised;
- ``forward(images, text_tokens) -> (B_img, B_txt)`` logits: the cosine similarities
  times the learned temperature ``exp(logit_scale)`` (what the contrastive loss reads);
- ``score(images, text_tokens) -> (B,)``: the cosine similarity of each (image, caption) row pair.

On disk (no pickles): ``scorer.safetensors`` (parameters) and ``scorer.json``
(format, version, the :class:`ScorerConfig`, the sha256 of the caption tokenizer it
was trained with, and free-form metadata). A scorer belongs to a model only if it reads
the same tokenizer (same sha256), the same caption length and the same image resolution:
:func:`check_scorer` refuses anything else in one line.
"""
from __future__ import annotations

import json
import logging
import math
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

import torch
import torch.nn.functional as F
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from common.configs import config_from_dict
from dalle.atomic import atomic_write, atomic_write_text
from dalle.config import check_spelling_fields
from dalle.model import add_spell_tables, spell_embedding

log = logging.getLogger(__name__)

FORMAT = "dalle-scorer"
VERSION = 1
WEIGHTS_FILE = "scorer.safetensors"
CONFIG_FILE = "scorer.json"
MAX_LOGIT_SCALE = math.log(100.0)


class ScorerError(ValueError):
    """A scorer directory that cannot be read, or a scorer that does not belong to a model."""


@dataclass
class ScorerConfig:
    """The dual encoder. ``resolution``, ``text_len`` and ``text_vocab_size`` are derived from the
    preset (vqvae.resolution, dalle.text_len, dalle.text_vocab_size) and stored with the weights."""

    resolution: int = 64            # = vqvae.resolution
    text_len: int = 32              # = dalle.text_len
    text_vocab_size: int = 1024     # = dalle.text_vocab_size (pad ids come on top, one per position)
    channels: list[int] = field(default_factory=lambda: [32, 64, 128])   # per stage; each halves the side
    pool_grid: int = 8              # image features are pooled to pool_grid x pool_grid, then an MLP
    n_layer: int = 2                # text transformer
    n_head: int = 4
    n_embd: int = 128
    embed_dim: int = 128            # the shared space
    # within-word positions of spelled text, as dalle.spell_pos (0: off; ids set by training from the tokenizer)
    spell_pos: int = 0
    spell_open_id: int = -1
    spell_close_id: int = -1

    ADDED_LATER: ClassVar[tuple[str, ...]] = ("spell_pos", "spell_open_id", "spell_close_id")

    def __post_init__(self) -> None:
        self.channels = list(self.channels)
        for name in ("resolution", "text_len", "text_vocab_size", "pool_grid", "n_layer", "n_head", "n_embd",
                     "embed_dim"):
            if getattr(self, name) < 1:
                raise ValueError(f"scorer.{name} must be positive, got {getattr(self, name)}")
        if not self.channels or any(c < 1 for c in self.channels):
            raise ValueError(f"scorer.channels must be positive widths, got {self.channels}")
        if self.resolution % (2 ** len(self.channels)) or self.resolution // 2 ** len(self.channels) < self.pool_grid:
            raise ValueError(f"scorer: {len(self.channels)} stride-2 stages of a {self.resolution} px image leave "
                             f"less than pool_grid={self.pool_grid} (or not a whole number of pixels)")
        if self.n_embd % self.n_head:
            raise ValueError(f"scorer.n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        check_spelling_fields(self, "scorer")

    @property
    def text_vocab_total(self) -> int:
        """Text embedding rows: BPE vocabulary plus one pad token per position."""
        return self.text_vocab_size + self.text_len

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, complete: bool = False) -> "ScorerConfig":
        """The config from a mapping; ``complete`` (a saved ``scorer.json``) requires every key."""
        return config_from_dict(cls, d, what="scorer", complete=complete)


class ConvStage(nn.Module):
    """Stride-2 conv then a residual 3x3 conv, GroupNorm + GELU: (B, Cin, H, W) -> (B, C, H/2, W/2)."""

    def __init__(self, c_in: int, c_out: int) -> None:
        super().__init__()
        groups = math.gcd(8, c_out)
        self.down = nn.Sequential(nn.Conv2d(c_in, c_out, 3, stride=2, padding=1), nn.GroupNorm(groups, c_out),
                                  nn.GELU())
        self.res = nn.Sequential(nn.Conv2d(c_out, c_out, 3, padding=1), nn.GroupNorm(groups, c_out), nn.GELU())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.down(x)
        return x + self.res(x)


class ImageEncoder(nn.Module):
    """Images (B, 3, R, R) in [0, 1] -> features (B, embed_dim). The features are pooled to a grid, not
    to one vector, and read by an MLP, so that where things are (left of, which letter comes first) survives."""

    def __init__(self, cfg: ScorerConfig) -> None:
        super().__init__()
        widths = [3, *cfg.channels]
        self.stages = nn.Sequential(*(ConvStage(a, b) for a, b in zip(widths[:-1], widths[1:])))
        self.pool = nn.AdaptiveAvgPool2d(cfg.pool_grid)
        self.proj = nn.Sequential(nn.Linear(cfg.channels[-1] * cfg.pool_grid ** 2, 2 * cfg.embed_dim), nn.GELU(),
                                  nn.Linear(2 * cfg.embed_dim, cfg.embed_dim))

    def grid(self, images: torch.Tensor) -> torch.Tensor:
        """The feature grid the projection reads: (B, C, pool_grid, pool_grid)."""
        return self.pool(self.stages((images - 0.5) / 0.25))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.proj(self.grid(images).flatten(1))  # (B, C * g * g) -> (B, D)


class TextEncoder(nn.Module):
    """Caption ids (B, text_len) -> features (B, embed_dim): token + position embeddings, pre-LN
    transformer layers (pads masked out), mean over the non-pad positions. Pads come last in every
    caption, so the columns that are pads in every row are cut first: the same result, less work."""

    def __init__(self, cfg: ScorerConfig) -> None:
        super().__init__()
        self.vocab_size = cfg.text_vocab_size
        self.tok_emb = nn.Embedding(cfg.text_vocab_total, cfg.n_embd)
        self.pos_emb = nn.Parameter(torch.zeros(cfg.text_len, cfg.n_embd))
        layer = nn.TransformerEncoderLayer(cfg.n_embd, cfg.n_head, 4 * cfg.n_embd, dropout=0.0,
                                           activation="gelu", batch_first=True, norm_first=True)
        self.blocks = nn.TransformerEncoder(layer, cfg.n_layer, enable_nested_tensor=False)
        self.ln = nn.LayerNorm(cfg.n_embd)
        self.proj = nn.Linear(cfg.n_embd, cfg.embed_dim)
        nn.init.normal_(self.pos_emb, std=0.02)
        nn.init.normal_(self.tok_emb.weight, std=0.02)
        self.spell = cfg if cfg.spell_pos else None
        if cfg.spell_pos:
            add_spell_tables(self, cfg, cfg.n_embd)

    def forward(self, text_tokens: torch.Tensor) -> torch.Tensor:
        pad = text_tokens >= self.vocab_size                                   # (B, T)
        T = max(1, int((~pad).sum(1).max())) if pad.numel() else text_tokens.size(1)
        text_tokens, pad = text_tokens[:, :T], pad[:, :T]                      # (B, T') trailing pads cut
        x = self.tok_emb(text_tokens) + self.pos_emb[: text_tokens.size(1)]    # (B, T, C)
        if self.spell is not None:
            x = x + spell_embedding(self, text_tokens, self.spell)
        x = self.blocks(x, src_key_padding_mask=pad)                           # (B, T, C)
        keep = (~pad).unsqueeze(-1).to(x.dtype)                                # (B, T, 1)
        x = (x * keep).sum(1) / keep.sum(1).clamp_min(1.0)                     # (B, C)
        return self.proj(self.ln(x))                                           # (B, D)


class ImageTextScorer(nn.Module):
    """The dual encoder (see the module docstring for the contract).

    Args:
        config: the architecture and the data it reads.
        tokenizer_sha256: identity of the caption tokenizer it is trained with (stored in ``scorer.json``).
        meta: free-form facts (training steps, data, measured accuracy), stored in ``scorer.json``.
    """

    def __init__(self, config: ScorerConfig, *, tokenizer_sha256: str | None = None,
                 meta: dict[str, Any] | None = None) -> None:
        super().__init__()
        self.config = config
        self.tokenizer_sha256 = tokenizer_sha256
        self.meta = dict(meta or {})
        self.image_encoder = ImageEncoder(config)
        self.text_encoder = TextEncoder(config)
        self.logit_scale = nn.Parameter(torch.tensor(math.log(1 / 0.07)))

    def encode_images(self, images: torch.Tensor) -> torch.Tensor:
        """(B, 3, R, R) floats in [0, 1] -> (B, D) unit vectors."""
        if images.ndim != 4 or images.shape[1:] != (3, self.config.resolution, self.config.resolution):
            raise ValueError(f"scorer expects images (B, 3, {self.config.resolution}, {self.config.resolution}), "
                             f"got {tuple(images.shape)}")
        return F.normalize(self.image_encoder(images.float()), dim=-1)

    def encode_text(self, text_tokens: torch.Tensor) -> torch.Tensor:
        """(B, text_len) int64 caption ids -> (B, D) unit vectors."""
        if text_tokens.ndim != 2 or text_tokens.shape[1] != self.config.text_len:
            raise ValueError(f"scorer expects text_tokens (B, {self.config.text_len}), got {tuple(text_tokens.shape)}")
        return F.normalize(self.text_encoder(text_tokens), dim=-1)

    def temperature_scale(self) -> torch.Tensor:
        """exp(logit_scale), clamped at 100 as in CLIP."""
        return self.logit_scale.clamp(max=MAX_LOGIT_SCALE).exp()

    def forward(self, images: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """(B_img, B_txt) logits: scaled cosine similarity of every image with every caption."""
        return self.temperature_scale() * self.encode_images(images) @ self.encode_text(text_tokens).T

    def score(self, images: torch.Tensor, text_tokens: torch.Tensor) -> torch.Tensor:
        """(B,) cosine similarity of image ``i`` with caption ``i``."""
        return (self.encode_images(images) * self.encode_text(text_tokens)).sum(-1)

    # ---- checkpoints -----------------------------------------------------------------------
    def save(self, directory: str | Path) -> Path:
        """Write ``scorer.safetensors`` and ``scorer.json`` into ``directory`` (each atomically)."""
        d = Path(directory)
        d.mkdir(parents=True, exist_ok=True)
        state = {k: v.detach().contiguous().cpu() for k, v in self.state_dict().items()}
        atomic_write(d / WEIGHTS_FILE, lambda tmp: save_file(state, tmp, metadata={"format": "pt"}))
        info = {"format": FORMAT, "version": VERSION, "config": self.config.to_dict(),
                "tokenizer_sha256": self.tokenizer_sha256, "meta": self.meta}
        atomic_write_text(d / CONFIG_FILE, json.dumps(info, indent=2, sort_keys=True) + "\n")
        log.info("saved scorer to %s", d)
        return d

    @classmethod
    def from_checkpoint(cls, directory: str | Path, device: str | torch.device = "cpu") -> "ImageTextScorer":
        """Rebuild a scorer saved by :meth:`save`, in eval mode.

        Raises:
            ScorerError: missing or corrupt files, one line.
        """
        d = Path(directory)
        cfg_path, weights_path = d / CONFIG_FILE, d / WEIGHTS_FILE
        if not cfg_path.is_file() or not weights_path.is_file():
            raise ScorerError(f"{d} is not a scorer: need {CONFIG_FILE} and {WEIGHTS_FILE}")
        try:
            info = json.loads(cfg_path.read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
            raise ScorerError(f"cannot read {cfg_path}: {e}") from None
        if not isinstance(info, dict) or info.get("format") != FORMAT:
            raise ScorerError(f"{cfg_path} is not a {FORMAT} file")
        version = info.get("version")
        if not isinstance(version, int) or isinstance(version, bool) or not 1 <= version <= VERSION:
            raise ScorerError(f"{cfg_path}: version must be an integer in 1..{VERSION}, got {version!r}")
        sha = info.get("tokenizer_sha256")
        if sha is not None and not isinstance(sha, str):
            raise ScorerError(f"{cfg_path}: tokenizer_sha256 must be a string, got {sha!r}")
        try:
            cfg = ScorerConfig.from_dict(info.get("config"), complete=True)
        except ValueError as e:
            raise ScorerError(f"{cfg_path}: {e}") from None
        meta = info.get("meta") if isinstance(info.get("meta"), dict) else {}
        model = cls(cfg, tokenizer_sha256=sha, meta=meta)
        try:
            model.load_state_dict(load_file(str(weights_path), device=str(device)), strict=True)
        except (RuntimeError, OSError, SafetensorError) as e:
            why = " ".join(str(e).split())[:240] or type(e).__name__
            raise ScorerError(f"{weights_path} does not match its config or is corrupt: {why}") from None
        return model.to(device).eval()


def check_scorer(scorer: ImageTextScorer, *, tokenizer_sha256: str, text_len: int, text_vocab_size: int,
                 resolution: int, where: str = "the scorer") -> None:
    """Raise :class:`ScorerError` unless ``scorer`` reads this model's captions and images.

    Args:
        scorer: the loaded scorer.
        tokenizer_sha256: the model's tokenizer identity (``TextTokenizer.sha256``).
        text_len, text_vocab_size: the model's caption encoding.
        resolution: the side of the model's images.
        where: how to name the scorer in the message (its path).
    """
    if scorer.tokenizer_sha256 != tokenizer_sha256:
        raise ScorerError(f"{where} was trained with tokenizer sha256 {str(scorer.tokenizer_sha256)[:12]}, "
                          f"this model's is {tokenizer_sha256[:12]}: it does not belong to this model")
    c = scorer.config
    if (c.text_len, c.text_vocab_size) != (text_len, text_vocab_size):
        raise ScorerError(f"{where} reads captions of {c.text_len} ids over {c.text_vocab_size}, this model "
                          f"{text_len} over {text_vocab_size}")
    if c.resolution != resolution:
        raise ScorerError(f"{where} scores {c.resolution} px images, this model makes {resolution} px")


class ImageTextRerank:
    """The reranking callable of a scorer: ``rerank(candidates) -> (N,)`` cosine similarities.

    ``needs_images`` tells the pipeline to decode every candidate first (``dalle.rerank``).
    Candidates' ``text_tokens`` come from the model's tokenizer, which :func:`check_scorer`
    has made sure is the scorer's.
    """

    needs_images = True
    __name__ = "clip"

    def __init__(self, scorer: ImageTextScorer, batch_size: int = 64) -> None:
        self.scorer = scorer
        self.batch_size = batch_size

    @torch.inference_mode()
    def __call__(self, candidates: Any) -> torch.Tensor:
        if candidates.images is None:
            raise ValueError("the clip scorer needs the decoded candidate images")
        device = next(self.scorer.parameters()).device
        out = []
        for i in range(0, candidates.images.size(0), self.batch_size):
            images = candidates.images[i:i + self.batch_size].to(device)           # (b, 3, R, R)
            text = candidates.text_tokens[i:i + self.batch_size].to(device)        # (b, text_len)
            out.append(self.scorer.score(images, text).float().cpu())
        return torch.cat(out) if out else torch.zeros(0)


# ---- the scorer of a bundle ------------------------------------------------------------------
BUNDLE_SCORER_DIR = "scorer"          # a bundle's scorer lives in BUNDLE/scorer/
BUNDLE_KEY = "scorer"                 # and bundle.json records it: {"dir", "sha256" of its weights, "tokenizer_sha256"}


def _sha256(path: Path) -> str:
    from dalle.tokenizer import file_sha256
    return file_sha256(path)


def bundle_scorer_record(bundle_dir: str | Path) -> dict[str, Any] | None:
    """The scorer record of a bundle's ``bundle.json``, or None when it has no scorer.

    Raises:
        ScorerError: a record that is not ``{"dir": str, "sha256": str, ...}``.
    """
    info_path = Path(bundle_dir) / "bundle.json"
    try:
        info = json.loads(info_path.read_text())
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise ScorerError(f"cannot read {info_path}: {e}") from None
    record = info.get(BUNDLE_KEY) if isinstance(info, dict) else None
    if record is None:
        return None
    if not (isinstance(record, dict) and isinstance(record.get("dir"), str) and isinstance(record.get("sha256"), str)):
        raise ScorerError(f"{info_path}: {BUNDLE_KEY} must be {{\"dir\": ..., \"sha256\": ...}}, got {record!r}")
    return record


def load_bundle_scorer(bundle_dir: str | Path, *, tokenizer_sha256: str, text_len: int, text_vocab_size: int,
                       resolution: int, device: str | torch.device = "cpu") -> ImageTextScorer | None:
    """The scorer that ``bundle.json`` says belongs to the bundle, checked, or None when it names none.

    The scorer's weights must be the ones recorded (sha256) and it must read the bundle's
    tokenizer, caption length and resolution (:func:`check_scorer`).

    Raises:
        ScorerError: a missing, replaced or foreign scorer (one line).
    """
    record = bundle_scorer_record(bundle_dir)
    if record is None:
        return None
    d = Path(bundle_dir) / record["dir"]
    weights = d / WEIGHTS_FILE
    if not weights.is_file():
        raise ScorerError(f"{Path(bundle_dir) / 'bundle.json'} names the scorer {d}, which has no {WEIGHTS_FILE}")
    sha = _sha256(weights)
    if sha != record["sha256"]:
        raise ScorerError(f"{weights} is not the scorer recorded in bundle.json (sha256 {sha[:12]} != "
                          f"{record['sha256'][:12]}): it was replaced")
    scorer = ImageTextScorer.from_checkpoint(d, device=device)
    check_scorer(scorer, tokenizer_sha256=tokenizer_sha256, text_len=text_len, text_vocab_size=text_vocab_size,
                 resolution=resolution, where=str(d))
    return scorer


def attach_scorer(bundle_dir: str | Path, scorer: ImageTextScorer) -> Path:
    """Save ``scorer`` into ``BUNDLE/scorer/`` and record it in ``bundle.json`` (written atomically).

    The scorer must belong to the bundle: the bundle's ``tokenizer.json`` must have the sha256 the
    scorer was trained with, and caption length and resolution must match (``dalle.json``,
    ``vqvae.json``). Replaces a scorer the bundle had.

    Raises:
        ScorerError: a scorer of another tokenizer, caption encoding or resolution.
    """
    bundle_dir = Path(bundle_dir)
    info_path = bundle_dir / "bundle.json"
    try:
        info = json.loads(info_path.read_text())
        dalle_cfg = json.loads((bundle_dir / "dalle.json").read_text())
        from vqvae.registry import read_config
        resolution = int(read_config(bundle_dir)[1]["resolution"])
        text_len, text_vocab_size = int(dalle_cfg["text_len"]), int(dalle_cfg["text_vocab_size"])
    except (OSError, UnicodeDecodeError, json.JSONDecodeError, KeyError, TypeError, ValueError) as e:
        raise ScorerError(f"{bundle_dir} is not a readable model bundle: {e}") from None
    check_scorer(scorer, tokenizer_sha256=_sha256(bundle_dir / "tokenizer.json"), text_len=text_len,
                 text_vocab_size=text_vocab_size, resolution=resolution, where="the scorer")
    d = scorer.save(bundle_dir / BUNDLE_SCORER_DIR)
    info[BUNDLE_KEY] = {"dir": BUNDLE_SCORER_DIR, "sha256": _sha256(d / WEIGHTS_FILE),
                        "tokenizer_sha256": scorer.tokenizer_sha256}
    atomic_write_text(info_path, json.dumps(info, indent=2) + "\n")
    return d
