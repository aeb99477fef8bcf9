"""Training-side configuration and the YAML presets in ``configs/``.

One YAML is read once at the entry point by :func:`load_preset`; values that
cross stages (the image vocabulary = codebook size, the image grid =
resolution / downsample, the data resolution) are derived here and nowhere
else.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any, Iterable

import yaml

from configs import PRESET_DIR
from dalle.config import DalleConfig
from vqvae.config import VQVAEConfig

PRECISIONS = ("auto", "32", "32-true", "bf16-mixed", "16-mixed", "bf16-true")
STRATEGIES = ("auto", "ddp", "ddp_spawn", "fsdp")


@dataclass
class DataConfig:
    """How shards are read and decoded. ``resolution`` is derived from the VQVAE."""

    train_shards: list[str] = field(default_factory=list)   # paths, brace patterns or pipe: commands
    val_shards: list[str] = field(default_factory=list)
    resolution: int = 0            # derived: vqvae.resolution
    num_workers: int = 2
    shuffle_buffer: int = 1000
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

    def __post_init__(self) -> None:
        self.betas = list(self.betas)
        if self.batch_size < 1 or self.max_steps < 1 or self.grad_accum < 1:
            raise ValueError("batch_size, max_steps and grad_accum must be positive")
        if self.lr <= 0:
            raise ValueError("lr must be positive")
        if self.precision not in PRECISIONS:
            raise ValueError(f"precision must be one of {PRECISIONS}, got {self.precision!r}")
        if self.strategy not in STRATEGIES:
            raise ValueError(f"strategy must be one of {STRATEGIES}, got {self.strategy!r}")
        if not 0.0 <= self.min_lr_ratio <= 1.0:
            raise ValueError("min_lr_ratio must be in [0, 1]")


@dataclass
class VQVAETrainConfig(TrainConfig):
    """dVAE training: gumbel temperature annealing and the KL warm-up."""

    temp_start: float = 1.0
    temp_end: float = 1.0 / 16
    temp_anneal_steps: int = 1000
    kl_weight: float = 6.6         # final weight of KL(q || uniform)
    kl_warmup_steps: int = 500
    usage_window: int = 100_000    # codes remembered for the codebook-usage metric
    dead_code_restart: bool = True
    usage_target: float = 0.9      # restart dead codes while usage is below this

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0 < self.temp_end <= self.temp_start:
            raise ValueError("need 0 < temp_end <= temp_start")
        if self.kl_weight < 0:
            raise ValueError("kl_weight must be >= 0")
        if self.usage_window < 1:
            raise ValueError("usage_window must be positive")


@dataclass
class DalleTrainConfig(TrainConfig):
    """Transformer training: loss weights, caption dropout, token shards."""

    text_loss_weight: float = 1.0 / 8   # image weight is 1 - text_loss_weight
    caption_dropout: float = 0.1
    nan_patience: int = 10               # consecutive non-finite losses before stopping
    activation_checkpointing: bool = False
    token_shards: list[str] = field(default_factory=list)  # precomputed (default data path)
    on_the_fly: bool = False             # tokenise images with the frozen VQVAE instead

    def __post_init__(self) -> None:
        super().__post_init__()
        self.token_shards = list(self.token_shards)
        if not 0.0 <= self.text_loss_weight <= 1.0:
            raise ValueError("text_loss_weight must be in [0, 1]")
        if not 0.0 <= self.caption_dropout < 1.0:
            raise ValueError("caption_dropout must be in [0, 1)")


@dataclass
class Preset:
    """A resolved preset: every component's config, derived values filled in."""

    name: str
    vqvae: VQVAEConfig
    dalle: DalleConfig
    data: DataConfig
    vqvae_train: VQVAETrainConfig
    dalle_train: DalleTrainConfig

    def to_dict(self) -> dict[str, Any]:
        return {"name": self.name, "vqvae": self.vqvae.to_dict(), "dalle": self.dalle.to_dict(),
                "data": asdict(self.data), "vqvae_train": asdict(self.vqvae_train),
                "dalle_train": asdict(self.dalle_train)}


_SECTIONS = {"vqvae": VQVAEConfig, "dalle": DalleConfig, "data": DataConfig,
             "vqvae_train": VQVAETrainConfig, "dalle_train": DalleTrainConfig}
_DERIVED = {"dalle": ("image_vocab_size", "image_grid"), "data": ("resolution",)}


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
        known = {f.name for f in fields(_SECTIONS[section])}
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
    vq = VQVAEConfig.from_dict(dict(raw.get("vqvae", {})))
    dalle_raw = dict(raw.get("dalle", {}))
    dalle_raw.update(image_vocab_size=vq.vocab_size, image_grid=vq.grid_size)
    data_raw = dict(raw.get("data", {}))
    data_raw["resolution"] = vq.resolution

    def build(cls, d):
        known = {f.name for f in fields(cls)}
        bad = set(d) - known
        if bad:
            raise ValueError(f"unknown keys for {cls.__name__}: {sorted(bad)}")
        return cls(**d)

    return Preset(name=raw.get("name", name), vqvae=vq, dalle=DalleConfig.from_dict(dalle_raw),
                  data=build(DataConfig, data_raw),
                  vqvae_train=build(VQVAETrainConfig, dict(raw.get("vqvae_train", {}))),
                  dalle_train=build(DalleTrainConfig, dict(raw.get("dalle_train", {}))))


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
