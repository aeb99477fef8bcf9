"""Train the caption BPE (``dalle tokenizer train``): byte-level BPE with HF ``tokenizers``.

Captions are normalised exactly as :class:`dalle.tokenizer.TextTokenizer`
normalises them before encoding (:func:`normalize_caption`), so the merges are
learnt on the text the model will see. The file gets one special token,
``<|endoftext|>``. With ``vocab_size >= 257`` every byte is in the vocabulary
(nothing is ever unknown); a smaller vocabulary (tests, toy data) keeps only
the bytes seen in training and drops others when encoding.

With ``spell=True`` (the default) the file also gets the spelling tokens of
:data:`dalle.tokenizer.SPELL_TOKENS`, and the merges are learnt on the captions
without the text they ask to draw (:func:`dalle.tokenizer.plain_text`): that
text reaches the model letter by letter, never as BPE tokens.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Iterable, Iterator

from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

from common.image_decode import SkipSample
from common.samples import CAPTION_EXT, SkipCounter, decode_caption, find_image, read_samples
from common.shards import expand_sources
from dalle.atomic import atomic_write
from dalle.tokenizer import EOT, SPELL_TOKENS, normalize_caption, plain_text
from train.config import DataConfig

log = logging.getLogger(__name__)

BYTE_ALPHABET = 256


def train_tokenizer(captions: Iterable[str], vocab_size: int, out_path: str | Path,
                    lowercase: bool = True, spell: bool = True) -> Path:
    """Learn a byte-level BPE on ``captions`` and write ``tokenizer.json`` atomically.

    Args:
        captions: caption strings (normalised here with :func:`normalize_caption`).
        vocab_size: the vocabulary size including ``<|endoftext|>``; at most the
            model's ``dalle.text_vocab_size``.
        out_path: the ``tokenizer.json`` to write (parent directories created).
        lowercase: lowercase captions (must match ``data.lowercase``).
        spell: add the spelling tokens, so that the text a caption asks to draw is
            encoded character by character (see :mod:`dalle.tokenizer`).
    Returns:
        ``out_path`` as a Path.
    Raises:
        ValueError: vocab_size too small, or no non-empty caption.
    """
    special = [EOT, *SPELL_TOKENS] if spell else [EOT]
    if vocab_size < len(special) + 1:
        raise ValueError(f"vocab_size must be at least {len(special) + 1}, got {vocab_size}")
    full_alphabet = vocab_size - len(special) > BYTE_ALPHABET
    if not full_alphabet:
        log.warning("vocab_size %d <= 256: bytes not seen in training cannot be encoded", vocab_size)
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=special, show_progress=False,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet() if full_alphabet else [])
    n = [0]

    def normalised() -> Iterator[str]:
        for caption in captions:
            text = normalize_caption(plain_text(caption) if spell else caption, lowercase)
            if text:
                n[0] += 1
                yield text

    tok.train_from_iterator(normalised(), trainer=trainer)
    if n[0] == 0:
        raise ValueError("no non-empty caption to train the tokenizer on")
    out_path = atomic_write(out_path, tok.save)
    log.info("trained a %d-token BPE on %d captions -> %s", tok.get_vocab_size(), n[0], out_path)
    return out_path


def captions_from_shards(sources: Any, data_cfg: DataConfig, *, limit: int | None = None,
                         counter: SkipCounter | None = None) -> Iterator[str]:
    """Captions of the samples in ``sources`` that have an image (images are not decoded).

    Captions go through :func:`common.samples.decode_caption` (UTF-8, normalised,
    case kept, empty ones skipped), so the tokenizer sees what
    training sees. Skips are counted in ``counter``.
    """
    counter = counter if counter is not None else SkipCounter()
    urls = expand_sources(sources)
    n = 0
    for sample in read_samples(urls, counter):
        if find_image(sample) is None:
            counter.add("no_image")
            continue
        try:
            yield decode_caption(sample.get(CAPTION_EXT), lowercase=False)   # train_tokenizer normalises
        except SkipSample as e:
            counter.add(e.reason)
            continue
        n += 1
        if limit is not None and n >= limit:
            return
