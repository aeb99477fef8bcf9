"""Training the caption BPE and feeding it from shards."""
from __future__ import annotations

import random
import string

import pytest
from tokenizers import Tokenizer

from tests.helpers import random_caption
from dalle.tokenizer import EOT, TextTokenizer
from common.samples import SkipCounter
from common.shards import ShardWriter
from train.text_tokenizer import captions_from_shards, train_tokenizer


def captions(n: int = 100) -> list[str]:
    rng = random.Random(1)
    return [random_caption(rng) for _ in range(n)]


def test_trained_file_has_eot_and_fits(tmp_path):
    path = train_tokenizer(captions(), 100, tmp_path / "tok" / "tokenizer.json")
    tok = Tokenizer.from_file(str(path))
    assert tok.token_to_id(EOT) is not None and tok.get_vocab_size() <= 100
    assert [p.name for p in path.parent.iterdir()] == ["tokenizer.json"]   # no temp file left
    before = path.read_bytes()
    train_tokenizer([c.upper() + " again" for c in captions()], 100, path)   # replaced in place
    assert path.read_bytes() != before


def _has_upper(path) -> bool:
    tok = Tokenizer.from_file(str(path))
    texts = [tok.decode([i]) for i in range(tok.get_vocab_size()) if tok.id_to_token(i) != EOT]
    return any(ch in string.ascii_uppercase for text in texts for ch in text)


def test_training_text_is_normalised(tmp_path):
    upper = [c.upper() for c in captions()]
    assert not _has_upper(train_tokenizer(upper, 120, tmp_path / "t.json", lowercase=True))
    assert _has_upper(train_tokenizer(upper, 120, tmp_path / "c.json", lowercase=False))


@pytest.mark.parametrize("spell,vocab", [(False, 300), (True, 400)])
def test_full_byte_alphabet_encodes_anything(tmp_path, spell, vocab):
    """With more than 256 BPE entries beside the special tokens every byte is in the vocabulary."""
    path = train_tokenizer(captions(), vocab, tmp_path / "t.json", spell=spell)
    tok = TextTokenizer(path, text_len=64, vocab_size=vocab)
    assert tok.spells == spell
    text = "ünïcödé ☃ 🎨 日本語 quick"
    assert tok.decode(tok.encode([text])[0]) == text


def test_no_caption_is_an_error(tmp_path):
    with pytest.raises(ValueError, match="no non-empty caption"):
        train_tokenizer(["", "   "], 100, tmp_path / "t.json")
    assert not (tmp_path / "t.json").exists()


def test_captions_from_shards(tmp_path, tiny_preset, image_shards):
    shards = image_shards(6)
    with ShardWriter(tmp_path / "shards", start_index=1) as w:
        w.write("noimage", {"txt": "caption without image"})
        w.write("badtext", {"png": b"x", "txt": b"\xff"})
        w.write("upper", {"png": b"x", "txt": "  An UPPER   case caption "})
    counter = SkipCounter()
    got = list(captions_from_shards(tmp_path / "shards", tiny_preset.data, counter=counter))
    assert len(got) == 7 and got[-1] == "An UPPER case caption"     # case kept: the tokenizer lowercases
    assert counter.drain() == {"no_image": 1, "bad_caption_encoding": 1}
    assert len(list(captions_from_shards(shards, tiny_preset.data, limit=4))) == 4


def test_spelling_tokenizer_learns_no_merges_of_the_words_it_spells(tmp_path):
    caps = [f"a sign that says {w}" for w in ("JAZZBAR", "ZOOKEEPER", "QUIXOTIC")] * 30 + captions()
    path = train_tokenizer(caps, 200, tmp_path / "t.json", spell=True)
    tok = Tokenizer.from_file(str(path))
    pieces = {tok.id_to_token(i).lower() for i in range(tok.get_vocab_size())}
    assert not {"jazz", "zoo", "quix", "keeper"} & pieces
    assert "<|spell|>" in pieces and "<|c:q|>" in pieces
    too_small = 70
    with pytest.raises(ValueError, match="vocab_size must be at least"):
        train_tokenizer(caps, too_small, tmp_path / "small.json", spell=True)
