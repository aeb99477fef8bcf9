"""dalle.tokenizer.TextTokenizer: fixed-length encoding the DALL·E way."""
from __future__ import annotations

import random
import shutil

import pytest
import torch

from tests.helpers import random_caption
from dalle.tokenizer import TextTokenizer, normalize_caption
from train.text_tokenizer import train_tokenizer

TEXT_LEN, VOCAB = 8, 128


@pytest.fixture
def tok(tiny_tokenizer) -> TextTokenizer:
    return tiny_tokenizer


def test_truncation_keeps_eot_and_is_counted(tok):
    long = " ".join(["a red square on a blue background"] * 4)
    assert tok.n_tokens(long) > tok.text_len
    ids = tok.encode([long, "a cat"])
    assert ids.shape == (2, tok.text_len) and ids.dtype == torch.long
    assert ids[0, -1].item() == tok.eot_id and not tok.is_pad(ids[0]).any()
    assert tok.truncations == 1
    tok.encode(["red"])
    assert tok.truncations == 1


def test_padding_is_one_distinct_pad_per_position(tok):
    ids = tok.encode(["red"])[0]
    n = tok.n_tokens("red")
    assert ids[n - 1].item() == tok.eot_id
    assert ids[n:].tolist() == [tok.vocab_size + i for i in range(n, tok.text_len)]
    assert tok.is_pad(ids).sum().item() == tok.text_len - n


def test_null_caption_is_all_pads(tok):
    null = tok.null_tokens(3)
    assert null.shape == (3, tok.text_len) and tok.is_pad(null).all()
    assert null[0].tolist() == [tok.pad_id(i) for i in range(tok.text_len)]
    assert len(set(null[0].tolist())) == tok.text_len


def test_normalisation(tok):
    assert normalize_caption("  Cafe\u0301\t  AU  lait ") == "caf\u00e9 au lait"
    assert normalize_caption("Mixed Case", lowercase=False) == "Mixed Case"
    same = tok.encode(["a RED   square\n", "a red square"])
    assert torch.equal(same[0], same[1])
    assert tok.decode(tok.encode(["A Red  Star"])[0]) == "a red star"


def test_hash_identity_follows_the_file(tmp_path, tok):
    copy = tmp_path / "copy.json"
    shutil.copy(tok.path, copy)
    assert TextTokenizer(copy, TEXT_LEN, VOCAB).sha256 == tok.sha256       # same bytes, same identity
    rng = random.Random(5)
    train_tokenizer([random_caption(rng) + " extra words" for _ in range(50)], VOCAB, copy)  # file changed
    assert TextTokenizer(copy, TEXT_LEN, VOCAB).sha256 != tok.sha256


def test_vocabulary_must_fit_the_model(tok):
    n = tok.tokenizer.get_vocab_size()
    with pytest.raises(ValueError, match="tokens but the model"):
        TextTokenizer(tok.path, TEXT_LEN, n - 1)
