"""The text tokenizer: a byte-level BPE (HF ``tokenizers``) encoded the DALL·E way.

A caption becomes exactly ``text_len`` ids: BPE tokens, truncated so that the
end-of-text token always survives, then padded with one distinct pad token per
text position (pad id ``vocab_size + i`` at position ``i``). The null caption
used for guidance dropout is the all-pad sequence.

Spelling: a BPE maps a word to one or a few arbitrary tokens, so a model can
only memorise how a known word looks and can never compose a new one from its
letters. A tokenizer file that holds the spelling tokens (``<|spell|>``,
``<|/spell|>`` and one ``<|c:X|>`` per character of :data:`CHARSET`, added by
``dalle tokenizer train``) encodes the text a caption asks to be drawn as
characters, case kept: quoted text (``"JAZZ"``, ``“Open AI”``) and otherwise the
word after a phrase such as "says", "reads", "called", "the word"
(:func:`split_spelled`). The rest of the caption goes through the BPE as before.
Whether a file spells is part of the file, hence of its sha256 and of the
identity of every model trained with it.
"""
from __future__ import annotations

import hashlib
import logging
import re
import unicodedata
from pathlib import Path

import torch
from tokenizers import Tokenizer

log = logging.getLogger(__name__)

EOT = "<|endoftext|>"
SPECIAL_TOKENS = [EOT]
SPELL_OPEN, SPELL_CLOSE = "<|spell|>", "<|/spell|>"
CHARSET = ("ABCDEFGHIJKLMNOPQRSTUVWXYZ" "abcdefghijklmnopqrstuvwxyz" "0123456789" " -'&.!?")
SPELL_TOKENS = [SPELL_OPEN, SPELL_CLOSE, *(f"<|c:{c}|>" for c in CHARSET)]

_QUOTED = re.compile(r'"([^"]+)"|“([^”]+)”|(?:(?<=\s)|^)\'([^\']+)\'(?=\s|$|[.,;:!?])')
_TRIGGER = re.compile(r"\b(?:says|say|saying|reads|read|reading|called|named|labell?ed|word|words|text|spelling|"
                      r"spells|written)\s+([A-Za-z0-9][A-Za-z0-9'&-]*)", re.IGNORECASE)
_NOT_A_WORD_TO_DRAW = {"a", "an", "the", "this", "that", "these", "those", "of", "in", "on", "at", "with",
                       "and", "or", "to", "for", "is", "it", "its", "as", "by", "from", "out", "aloud", "like"}


def split_spelled(caption: str) -> list[tuple[str, bool]]:
    """Split a caption into ``(text, spelled)`` parts: the text to be drawn, and the rest.

    Quoted text is spelled (double quotes, curly quotes, or single quotes around
    whole words); a caption with no quotes spells the word after a phrase such as
    "says", "reads", "called" or "the word", unless that word is an article or
    similar ("reads a book" spells nothing).

    Args:
        caption: the caption, case kept.
    Returns:
        Non-empty parts in order; joining their texts with spaces gives the caption
        without its quotes.
    """
    spans = [(m.start(), m.end(), next(g for g in m.groups() if g is not None)) for m in _QUOTED.finditer(caption)]
    if not spans:
        spans = [(m.start(1), m.end(1), m.group(1)) for m in _TRIGGER.finditer(caption)
                 if m.group(1).lower() not in _NOT_A_WORD_TO_DRAW]
    parts: list[tuple[str, bool]] = []
    pos = 0
    for start, end, text in spans:
        if caption[pos:start].strip():
            parts.append((caption[pos:start].strip(), False))
        if text.strip():
            parts.append((text.strip(), True))
        pos = end
    if caption[pos:].strip():
        parts.append((caption[pos:].strip(), False))
    return parts


def plain_text(caption: str) -> str:
    """The caption without its spelled parts: what the BPE of a spelling tokenizer is trained on."""
    return " ".join(text for text, spelled in split_spelled(caption) if not spelled)


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



def null_tokens(vocab_size: int, text_len: int, batch: int = 1,
                device: torch.device | str | None = None) -> torch.Tensor:
    """The null caption: every position its own pad id (``vocab_size + i``).

    The one definition of the caption that guidance dropout trains on and that
    guided sampling conditions on (training builds it from the model config,
    without a tokenizer file).

    Args:
        vocab_size: the BPE vocabulary size (``DalleConfig.text_vocab_size``); pad ids start there.
        text_len: ids per caption.
        batch: rows.
        device: where to build it (default: torch's default device).
    Returns:
        (batch, text_len) int64.
    """
    row = torch.arange(vocab_size, vocab_size + text_len, device=device)   # (text_len,)
    return row.expand(batch, -1).clone()                                  # (B, text_len)


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
        self.spells = self.tokenizer.token_to_id(SPELL_OPEN) is not None
        if self.spells:
            ids = [self.tokenizer.token_to_id(t) for t in SPELL_TOKENS]
            if None in ids:
                raise ValueError(f"{self.path} has {SPELL_OPEN} but not every spelling token")
            self.spell_open, self.spell_close = ids[0], ids[1]
            self.char_ids = dict(zip(CHARSET, ids[2:]))
            self.id_chars = dict(zip(ids[2:], CHARSET))
        self.sha256 = file_sha256(self.path)
        self.truncations = 0   # captions cut to fit text_len since construction

    def pad_id(self, position: int) -> int:
        """The pad token of text position ``position``."""
        return self.vocab_size + position

    def is_pad(self, ids: torch.Tensor) -> torch.Tensor:
        """Boolean mask of pad ids."""
        return ids >= self.vocab_size

    def null_tokens(self, batch: int = 1) -> torch.Tensor:
        """The null caption (all pads), shape (batch, text_len); see :func:`null_tokens`."""
        return null_tokens(self.vocab_size, self.text_len, batch)

    def token_ids(self, caption: str) -> list[int]:
        """The caption's token ids before truncation and padding, end-of-text not included."""
        if not self.spells:
            return self.tokenizer.encode(normalize_caption(caption, self.lowercase)).ids
        ids: list[int] = []
        for i, (text, spelled) in enumerate(split_spelled(normalize_caption(caption, lowercase=False))):
            if spelled:
                ids += [self.spell_open, *(self.char_ids[c] for c in text if c in self.char_ids), self.spell_close]
            else:
                text = normalize_caption(text, self.lowercase)
                ids += self.tokenizer.encode(text if i == 0 else " " + text).ids
        return ids

    def encode_one(self, caption: str) -> tuple[list[int], bool]:
        """Encode one caption to ``text_len`` ids; also return whether it was truncated."""
        ids = self.token_ids(caption)
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
        if not self.spells:
            return self.tokenizer.decode(ids)
        out, run, spelled = [], [], None
        for i in ids + [None]:
            if i is None or i in (self.spell_open, self.spell_close):
                if run:
                    out.append(self.tokenizer.decode(run).strip())
                    run = []
                if spelled is not None and i != self.spell_open:
                    out.append(f'"{spelled}"')
                    spelled = None
                if i == self.spell_open:
                    spelled = ""
            elif spelled is not None:
                spelled += self.id_chars.get(i, "")
            else:
                run.append(i)
        return " ".join(t for t in out if t)

    def n_tokens(self, caption: str) -> int:
        """BPE tokens of a caption, before truncation (end-of-text included)."""
        return len(self.token_ids(caption)) + 1
