"""The text tokenizer: a byte-level BPE (HF ``tokenizers``) encoded the DALL·E way.

A caption becomes exactly ``text_len`` ids: BPE tokens, truncated so that the
end-of-text token always survives, then padded with one distinct pad token per
text position (pad id ``vocab_size + i`` at position ``i``). The null caption
used for guidance dropout is the all-pad sequence.
"""
from __future__ import annotations

import hashlib
import logging
import unicodedata
from pathlib import Path

import torch
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
SPECIAL_TOKENS = [EOT]


def normalize_caption(text: str, lowercase: bool = True) -> str:
    """Unicode NFC, whitespace collapsed and stripped, optional lowercasing."""
    text = unicodedata.normalize("NFC", text)
    text = " ".join(text.split())
    return text.lower() if lowercase else text


def file_sha256(path: str | Path) -> str:
    """Hex SHA-256 of a file: the identity of a tokenizer that travels with models."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class TextTokenizer:
    """Fixed-length caption encoder around a ``tokenizer.json``.

    Args:
        path: the ``tokenizer.json`` file.
        text_len: number of ids per caption after truncation and padding.
        vocab_size: the model's BPE vocabulary size (``DalleConfig.text_vocab_size``);
            pad ids start there. The file's vocabulary must not be larger.
        lowercase: lowercase captions before encoding.
    """

    def __init__(self, path: str | Path, text_len: int, vocab_size: int, lowercase: bool = True):
        self.path = Path(path)
        if not self.path.is_file():
            raise FileNotFoundError(f"tokenizer file not found: {self.path}")
        self.tokenizer = Tokenizer.from_file(str(self.path))
        self.text_len = text_len
        self.vocab_size = vocab_size
        self.lowercase = lowercase
        n = self.tokenizer.get_vocab_size()
        if n > vocab_size:
            raise ValueError(f"{self.path} has {n} tokens but the model's text vocabulary is {vocab_size}")
        eot = self.tokenizer.token_to_id(EOT)
        if eot is None:
            raise ValueError(f"{self.path} has no {EOT} token")
        self.eot_id = eot
        self.sha256 = file_sha256(self.path)
        self.truncations = 0   # captions cut to fit text_len since construction

    def pad_id(self, position: int) -> int:
        """The pad token of text position ``position``."""
        return self.vocab_size + position

    def is_pad(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of pad ids."""
        return ids >= self.vocab_size

    def null_tokens(self, batch: int = 1) -> torch.Tensor:
        """The null caption (all pads), shape (batch, text_len)."""
        return torch.arange(self.vocab_size, self.vocab_size + self.text_len).expand(batch, -1).clone()

    def encode_one(self, caption: str) -> tuple[list[int], bool]:
        """Encode one caption to ``text_len`` ids; also return whether it was truncated."""
        ids = self.tokenizer.encode(normalize_caption(caption, self.lowercase)).ids
        truncated = len(ids) + 1 > self.text_len
        ids = ids[: self.text_len - 1] + [self.eot_id]
        ids += [self.pad_id(i) for i in range(len(ids), self.text_len)]
        return ids, truncated

    def encode(self, captions: list[str]) -> torch.Tensor:
        """Encode captions to a (B, text_len) int64 tensor, counting truncations."""
        rows = []
        for caption in captions:
            ids, truncated = self.encode_one(caption)
            if truncated:
                self.truncations += 1
            rows.append(ids)
        return torch.tensor(rows, dtype=torch.long)

    def decode(self, ids: torch.Tensor | list[int]) -> str:
        """Text of one row of ids (pads and end-of-text dropped)."""
        ids = [int(i) for i in ids]
        ids = [i for i in ids if i < self.vocab_size and i != self.eot_id]
        return self.tokenizer.decode(ids)

    def n_tokens(self, caption: str) -> int:
        """BPE tokens of a caption, before truncation (end-of-text included)."""
        return len(self.tokenizer.encode(normalize_caption(caption, self.lowercase)).ids) + 1
