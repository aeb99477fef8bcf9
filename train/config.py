"""Training-side configuration and the YAML presets in ``configs/``.

One YAML is read once at the entry point by :func:`load_preset`; values that
cross stages (the image vocabulary = codebook size, the image grid =
resolution / downsample, the data resolution) are derived here and nowhere
else.
"""
from __future__ import annotations

import copy
import dataclasses
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from configs import PRESET_DIR
from dalle.config import DalleConfig
from dalle.scorer import ScorerConfig
from vqvae.config import VQVAEConfig
from vqvae.registry import DEFAULT_KIND, config_class, config_from_preset

PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")
LOGGERS = ("csv", "tensorboard")
SAMPLE_PROMPTS = ["a red circle above a blue square", "a storefront that says OpenAI", "an emoji of a cat face",
                  "two green triangles"]


@dataclass
class DataConfig:
    """How shards are read and decoded. ``resolution`` is derived from the VQVAE."""

    train_shards: list[str] = field(default_factory=list)   # paths, brace patterns or pipe: commands
    val_shards: list[str] = field(default_factory=list)
    resolution: int = 0            # derived: vqvae.resolution
    num_workers: int = 2
    shuffle_buffer: int = 1000
    interleave: int = 4            # training shards read at once, a sample from each in turn (1: in sequence)
    resampled: bool = False        # endless stream sampled with replacement (step-based training)
    random_crop: bool = False      # random instead of centre crop
    background: list[int] = field(default_factory=lambda: [255, 255, 255])  # alpha composited on this
    lowercase: bool = True         # caption normalisation
    max_pixels: int = 89_478_485   # decompression-bomb guard (Pillow's default limit)
    min_size: int = 8              # images smaller than this on either side are skipped

    def __post_init__(self) -> None:
        self.train_shards = list(self.train_shards)
        self.val_shards = list(self.val_shards)
        if self.num_workers < 0:
            raise ValueError("data.num_workers must be >= 0")
        if self.shuffle_buffer < 0:
            raise ValueError("data.shuffle_buffer must be >= 0")
        if self.interleave < 1:
            raise ValueError("data.interleave must be >= 1")
        if len(self.background) != 3 or not all(0 <= c <= 255 for c in self.background):
            raise ValueError(f"data.background must be three values in 0..255, got {self.background}")
        if self.max_pixels < 1:
            raise ValueError("data.max_pixels must be positive")


@dataclass
class TrainConfig:
    """Optimisation and run settings shared by both training stages."""

    batch_size: int = 32
    lr: float = 3e-4
    weight_decay: float = 0.0
    betas: list[float] = field(default_factory=lambda: [0.9, 0.95])
    warmup_steps: int = 100
    max_steps: int = 1000
    max_minutes: float = 0.0       # also stop after this many minutes of training (0: no limit); the
    #                                learning-rate schedule still follows max_steps
    min_lr_ratio: float = 0.1      # cosine decay ends at lr * min_lr_ratio
    grad_clip: float = 1.0
    grad_accum: int = 1
    precision: str = "auto"        # auto: bf16-mixed on GPU, 32 on CPU
    devices: Any = "auto"
    num_nodes: int = 1
    strategy: str = "auto"         # auto: ddp with more than one device
    compile: bool = False
    seed: int = 0
    log_every: int = 10
    image_every: int = 200         # save a PNG grid every N steps (0: never)
    ckpt_every: int = 200          # checkpoint every N steps
    val_every: int = 0             # validate every N steps (0: never)
    logger: str = "csv"            # csv, or tensorboard (event files in out_dir/tensorboard, plus the CSV)

    def __post_init__(self) -> None:
        self.betas = list(self.betas)
        if self.logger not in LOGGERS:
            raise ValueError(f"logger must be one of {LOGGERS}, got {self.logger!r}")
        if self.batch_size < 1 or self.max_steps < 1 or self.grad_accum < 1:
            raise ValueError("batch_size, max_steps and grad_accum must be positive")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if not self.max_minutes >= 0:
            raise ValueError(f"max_minutes must be >= 0 (0: no limit), got {self.max_minutes}")
        if isinstance(self.precision, int) and not isinstance(self.precision, bool):
            self.precision = str(self.precision)      # `--set dalle_train.precision=32` reads as a number
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("min_lr_ratio must be in [0, 1]")


@dataclass
class VQVAETrainConfig(TrainConfig):
    """Image tokenizer training: the dVAE's gumbel temperature annealing and KL warm-up, PatchVQ's k-means."""

    temp_start: float = 1.0
    temp_end: float = 1.0 / 16
    temp_anneal_steps: int = 1000
    kl_weight: float = 6.6         # final weight of KL(q || uniform)
    kl_warmup_steps: int = 500
    usage_window: int = 100_000    # codes remembered for the codebook-usage metric
    dead_code_restart: bool = True
    usage_target: float = 0.9      # restart dead codes while usage is below this
    kmeans_images: int = 2000      # PatchVQ: training images whose patches the k-means codebook is fitted on
    kmeans_iters: int = 15         # PatchVQ: Lloyd iterations
    edge_weight: float = 0.02      # PatchVQ: weight of the image-gradient (edge) loss beside the MSE

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.temp_end <= self.temp_start:
            raise ValueError("need 0 < temp_end <= temp_start")
        if self.kl_weight < 0:
            raise ValueError("kl_weight must be >= 0")
        if self.usage_window < 1:
            raise ValueError("usage_window must be positive")


CODE_INITS = ("random", "codebook")


@dataclass
class DalleTrainConfig(TrainConfig):
    """Transformer training: loss weights, caption dropout, token shards."""

    text_loss_weight: float = 1.0 / 8   # image weight is 1 - text_loss_weight
    caption_dropout: float = 0.1
    nan_patience: int = 10               # consecutive non-finite losses before stopping
    activation_checkpointing: bool = False
    token_shards: list[str] = field(default_factory=list)  # precomputed (default data path)
    on_the_fly: bool = False             # tokenise images with the frozen VQVAE instead
    sample_prompts: list[str] = field(default_factory=lambda: list(SAMPLE_PROMPTS))  # drawn every image_every
    # how a fresh run starts the image-code embedding and head: "random" (GPT-2 init) or "codebook"
    # (from what each code looks like: DalleTransformer.init_image_codes; needs a PatchVQ)
    code_init: str = "random"
    # the image loss chunk by chunk, without the (B, image_len, V) logits (train.fused_ce): same loss,
    # a faster step; off: logits then cross-entropy, as written in dalle_loss
    fused_image_loss: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        self.token_shards = list(self.token_shards)
        if self.code_init not in CODE_INITS:
            raise ValueError(f"code_init must be one of {CODE_INITS}, got {self.code_init!r}")
        if not 0.0 <= self.text_loss_weight <= 1.0:
            raise ValueError("text_loss_weight must be in [0, 1]")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("caption_dropout must be in [0, 1)")


@dataclass
class ScorerTrainConfig(TrainConfig):
    """Contrastive scorer training: symmetric InfoNCE over the batch plus hard negative captions."""

    batch_size: int = 64
    lr: float = 2e-3
    weight_decay: float = 0.05
    hard_negatives: bool = True          # add the synthetic hard negatives of synth.negatives
    hard_negative_weight: float = 1.0    # weight of the image -> caption term that sees them
    # image negatives per sample (synth.negatives.image_negatives: the truth with one stated fact made false,
    # rendered): a caption -> image cross-entropy over the true image and these, the question reranking asks
    image_negatives: int = 0
    image_negative_weight: float = 1.0
    aux_weight: float = 1.0              # weight of the auxiliary heads' loss; 0: none
    # which auxiliary heads (train.scorer_module.AUX_HEADS): from the image, "cells" (colour-shape
    # class per cell), "chars" (a sign's letters), "counts" (objects per colour-shape pair); from the
    # caption embedding, "text_chars", "text_counts", "text_relation"; from both, "layout" / "text_layout"
    # (the two objects of a stated relation in reading order along its axis)
    aux_heads: list[str] = field(default_factory=lambda: ["cells", "chars"])
    # the colour-shape targets of "cells", "layout", "text_layout" and the subject of "text_relation" as two
    # classifications (colour, shape) instead of one over pairs: a held-out pair is then no class the heads
    # never saw, only a colour and a shape they both know
    aux_factored: bool = False

    def __post_init__(self) -> None:
        super().__post_init__()
        self.aux_heads = list(self.aux_heads)
        if self.hard_negative_weight < 0:
            raise ValueError("scorer_train.hard_negative_weight must be >= 0")
        if self.aux_weight < 0:
            raise ValueError("scorer_train.aux_weight must be >= 0")
        if self.image_negatives < 0 or self.image_negative_weight < 0:
            raise ValueError("scorer_train.image_negatives and image_negative_weight must be >= 0")
        known = ("cells", "chars", "counts", "layout", "text_chars", "text_counts", "text_relation", "text_layout")
        unknown = [h for h in self.aux_heads if h not in known]
        if unknown or len(set(self.aux_heads)) != len(self.aux_heads):
            raise ValueError(f"scorer_train.aux_heads must be distinct names out of {known}, got {self.aux_heads}")


@dataclass
class Preset:
    """A resolved preset: every component's config, derived values filled in."""

    name: str
    vqvae: Any                      # VQVAEConfig or another image tokenizer's config (vqvae.kind)
    dalle: DalleConfig
    data: DataConfig
    vqvae_train: VQVAETrainConfig
    dalle_train: DalleTrainConfig
    scorer: ScorerConfig = field(default_factory=ScorerConfig)
    scorer_train: ScorerTrainConfig = field(default_factory=ScorerTrainConfig)

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vqvae": self.vqvae.to_dict(), "dalle": self.dalle.to_dict(),
                "data": asdict(self.data), "vqvae_train": asdict(self.vqvae_train),
                "dalle_train": asdict(self.dalle_train), "scorer": self.scorer.to_dict(),
                "scorer_train": asdict(self.scorer_train)}


_SECTIONS = {"vqvae": VQVAEConfig, "dalle": DalleConfig, "data": DataConfig,
             "vqvae_train": VQVAETrainConfig, "dalle_train": DalleTrainConfig, "scorer": ScorerConfig,
             "scorer_train": ScorerTrainConfig}
_DERIVED = {"dalle": ("image_vocab_size", "image_grid"), "data": ("resolution",),
            "scorer": ("resolution", "text_len", "text_vocab_size")}


def available_presets() -> list[str]:
    """Names of the presets shipped in ``configs/``."""
    return sorted(p.stem for p in PRESET_DIR.glob("*.yaml"))


def apply_overrides(raw: dict[str, Any], overrides: Iterable[str]) -> dict[str, Any]:
    """Apply ``section.key=value`` overrides (values parsed as YAML) to a raw preset dict."""
    raw = copy.deepcopy(raw)
    for item in overrides:
        if "=" not in item:
            raise ValueError(f"override {item!r} is not of the form section.key=value")
        path, value = item.split("=", 1)
        keys = path.strip().split(".")
        if len(keys) != 2 or keys[0] not in _SECTIONS:
            raise ValueError(f"override {item!r}: expected one of {sorted(_SECTIONS)} then .key")
        section, key = keys
        cls = (config_class(raw.get("vqvae", {}).get("kind", DEFAULT_KIND)) if section == "vqvae"
               else _SECTIONS[section])
        known = {f.name for f in fields(cls)} | ({"kind"} if section == "vqvae" else set())
        if key not in known:
            raise ValueError(f"override {item!r}: {section} has no key {key!r}")
        if key in _DERIVED.get(section, ()):
            raise ValueError(f"override {item!r}: {section}.{key} is derived, set it on the vqvae")
        raw.setdefault(section, {})[key] = yaml.safe_load(value)
    return raw


def preset_from_dict(raw: dict[str, Any], name: str = "custom") -> Preset:
    """Build a :class:`Preset` from a raw dict, deriving the cross-stage values."""
    unknown = set(raw) - set(_SECTIONS) - {"name"}
    if unknown:
        raise ValueError(f"unknown preset sections: {sorted(unknown)}")
    for section, keys in _DERIVED.items():
        for key in keys:
            if key in raw.get(section, {}):
                raise ValueError(f"{section}.{key} is derived from the vqvae section; remove it")
    vq = config_from_preset(dict(raw.get("vqvae", {})))      # vqvae.kind picks the image tokenizer
    dalle_raw = dict(raw.get("dalle", {}))
    dalle_raw.update(image_vocab_size=vq.vocab_size, image_grid=vq.grid_size)
    data_raw = dict(raw.get("data", {}))
    data_raw["resolution"] = vq.resolution
    dalle_cfg = DalleConfig.from_dict(dalle_raw)
    scorer_raw = dict(raw.get("scorer", {}))
    scorer_raw.update(resolution=vq.resolution, text_len=dalle_cfg.text_len,
                      text_vocab_size=dalle_cfg.text_vocab_size)

    def build(cls, d):
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"unknown keys for {cls.__name__}: {sorted(bad)}")
        return cls(**d)

    return Preset(name=raw.get("name", name), vqvae=vq, dalle=dalle_cfg,
                  data=build(DataConfig, data_raw),
                  vqvae_train=build(VQVAETrainConfig, dict(raw.get("vqvae_train", {}))),
                  dalle_train=build(DalleTrainConfig, dict(raw.get("dalle_train", {}))),
                  scorer=ScorerConfig.from_dict(scorer_raw),
                  scorer_train=build(ScorerTrainConfig, dict(raw.get("scorer_train", {}))))


def load_preset(name_or_path: str | Path, overrides: Iterable[str] = ()) -> Preset:
    """Read a preset by name (``configs/NAME.yaml``) or from a YAML path, apply overrides.

    Args:
        name_or_path: a preset name such as ``"tiny"`` or a path to a YAML file.
        overrides: ``section.key=value`` strings, values parsed as YAML.
    Returns:
        The resolved :class:`Preset`.
    """
    path = Path(name_or_path)
    if not path.suffix:
        path = PRESET_DIR / f"{name_or_path}.yaml"
        if not path.exists():
            raise ValueError(f"unknown preset {name_or_path!r}; available: {available_presets()}")
    elif not path.exists():
        raise ValueError(f"preset file not found: {path}")
    raw = yaml.safe_load(path.read_text()) or {}
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: a preset must be a YAML mapping")
    raw = apply_overrides(raw, overrides)
    return preset_from_dict(raw, name=path.stem)


def with_image_tokenizer(preset: Preset, image_config: Any) -> Preset:
    """``preset`` with the values that cross stages read from a trained image tokenizer's config.

    Stage 2 (token precomputation, transformer training) models the codes of one trained
    image tokenizer, so its codebook size, code grid and resolution come from that
    artefact, never from the preset's ``vqvae`` section (which may have been overridden
    when the tokenizer was trained).

    Args:
        preset: the resolved preset.
        image_config: the trained tokenizer's config (``vocab_size``, ``grid_size``, ``resolution``).
    Returns:
        A new :class:`Preset` whose ``vqvae`` is the tokenizer's own config.
    """
    dalle = dataclasses.replace(preset.dalle, image_vocab_size=image_config.vocab_size,
                                image_grid=image_config.grid_size)
    data = dataclasses.replace(preset.data, resolution=image_config.resolution)
    return dataclasses.replace(preset, vqvae=image_config, dalle=dalle, data=data)
