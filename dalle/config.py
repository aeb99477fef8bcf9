"""Configuration of the transformer over [text_tokens ; image_tokens]."""
from __future__ import annotations

from dataclasses import asdict, dataclass, field, replace
from typing import Any, ClassVar

from common.configs import config_from_dict

ATTN_LAYOUTS = ("dense", "row", "column", "conv")


def check_spelling_fields(cfg: Any, what: str) -> None:
    """Check ``spell_pos``, ``spell_open_id``, ``spell_close_id`` of a config that has them.

    Raises:
        ValueError: a negative ``spell_pos``, or ids that are not two distinct text token ids (-1: unset).
    """
    if cfg.spell_pos < 0:
        raise ValueError(f"{what}.spell_pos must be >= 0, got {cfg.spell_pos}")
    ids = (cfg.spell_open_id, cfg.spell_close_id)
    if ids != (-1, -1) and (not all(0 <= i < cfg.text_vocab_size for i in ids) or ids[0] == ids[1]):
        raise ValueError(f"{what}.spell_open_id / spell_close_id must be two text token ids (or -1, unset), "
                         f"got {ids}")


def with_spelling_ids(cfg: Any, tokenizer: Any) -> Any:
    """``cfg`` (a transformer or scorer config) with the tokenizer's spelling token ids when it uses
    within-word positions (``spell_pos`` > 0); unchanged otherwise.

    Raises:
        ValueError: ``spell_pos`` is set but the tokenizer (a ``dalle.tokenizer.TextTokenizer``) does not spell.
    """
    if not cfg.spell_pos:
        return cfg
    if not tokenizer.spells:
        raise ValueError(f"spell_pos={cfg.spell_pos} needs a caption tokenizer that spells (made with spelling "
                         f"tokens); {tokenizer.path} has none")
    return replace(cfg, spell_open_id=tokenizer.spell_open, spell_close_id=tokenizer.spell_close)


def spell_tables_added(old: Any, new: Any) -> bool:
    """Whether config ``new`` is ``old`` (a transformer's or a scorer's) with within-word positions turned
    on: the one change a run started from saved weights (``--init-from``) allows; the tables start at zero."""
    return (old.spell_pos == 0 and new.spell_pos > 0
            and replace(new, spell_pos=0, spell_open_id=old.spell_open_id,
                        spell_close_id=old.spell_close_id) == old)


@dataclass
class DalleConfig:
    """Decoder-only transformer over a fixed-length caption followed by image codes.

    ``image_vocab_size`` and ``image_grid`` are derived from the VQVAE config
    (codebook size, resolution / downsample) by ``train.config.load_preset``
    and stored with every checkpoint; they are never patched at run time.
    """

    text_len: int = 32            # caption length in BPE tokens, after padding
    text_vocab_size: int = 1024   # BPE vocabulary (pad tokens come on top: one per position)
    image_vocab_size: int = 512   # = vqvae.vocab_size
    image_grid: int = 16          # = vqvae.resolution // vqvae.downsample
    n_layer: int = 4
    n_head: int = 4
    n_embd: int = 256
    dropout: float = 0.0
    # attention layout per layer, cycled over layers; "dense" is causal attention.
    attn_layouts: list[str] = field(default_factory=lambda: ["dense"])
    conv_kernel: int = 11         # neighbourhood of the "conv" layout (paper: 11)
    # within-word positions of spelled text: a character between the spelling tokens gets embeddings of
    # its index from the word's start, from its end, and of its offset from the word's centre (clamped
    # to spell_pos - 1), so an image column can find "its" letter whatever the caption before the word.
    # 0 turns them off; the ids are the tokenizer's <|spell|> and <|/spell|> (set by training from it).
    spell_pos: int = 0
    spell_open_id: int = -1
    spell_close_id: int = -1

    ADDED_LATER: ClassVar[tuple[str, ...]] = ("spell_pos", "spell_open_id", "spell_close_id")

    def __post_init__(self) -> None:
        for name in ("text_len", "text_vocab_size", "image_vocab_size", "image_grid",
                     "n_layer", "n_head", "n_embd"):
            if getattr(self, name) < 1:
                raise ValueError(f"dalle.{name} must be positive, got {getattr(self, name)}")
        if self.text_len < 2:
            raise ValueError("dalle.text_len must be >= 2")
        if self.n_embd % self.n_head:
            raise ValueError(f"dalle.n_embd {self.n_embd} is not divisible by n_head {self.n_head}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"dalle.dropout must be in [0, 1), got {self.dropout}")
        self.attn_layouts = list(self.attn_layouts)
        if not self.attn_layouts:
            raise ValueError("dalle.attn_layouts must name at least one layout")
        for layout in self.attn_layouts:
            if layout not in ATTN_LAYOUTS:
                raise ValueError(f"dalle.attn_layouts: unknown layout {layout!r}; choose from {ATTN_LAYOUTS}")
        if self.conv_kernel < 1 or self.conv_kernel % 2 == 0:
            raise ValueError(f"dalle.conv_kernel must be odd and positive, got {self.conv_kernel}")
        check_spelling_fields(self, "dalle")

    @property
    def image_len(self) -> int:
        """Number of image tokens: image_grid ** 2."""
        return self.image_grid * self.image_grid

    @property
    def text_vocab_total(self) -> int:
        """Text embedding rows: BPE vocabulary plus one pad token per text position."""
        return self.text_vocab_size + self.text_len

    @property
    def block_size(self) -> int:
        """Full sequence length: text_len + image_len."""
        return self.text_len + self.image_len

    def layout_of(self, layer: int) -> str:
        """The attention layout of layer ``layer`` (layouts are cycled)."""
        return self.attn_layouts[layer % len(self.attn_layouts)]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_dict(cls, d: dict[str, Any], *, complete: bool = False) -> "DalleConfig":
        """The config from a mapping; ``complete`` (a saved ``dalle.json``) requires every key."""
        return config_from_dict(cls, d, what="dalle", complete=complete)
