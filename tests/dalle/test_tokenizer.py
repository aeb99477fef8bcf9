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


def test_null_tokens_function_needs_no_tokenizer_file():
    from dalle.tokenizer import null_tokens

    null = null_tokens(10, 4, batch=2)
    assert null.tolist() == [[10, 11, 12, 13]] * 2 and null.dtype == torch.int64
    null[0, 0] = 0                                           # a fresh tensor, not a shared view
    assert null_tokens(10, 4, batch=2)[0, 0] == 10


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


@pytest.mark.parametrize("caption,spelled", [
    ("a storefront that says OpenAI", ["OpenAI"]),
    ('a sign that reads "JAZZ" on a wall', ["JAZZ"]),
    ("a store called “Open AI”", ["Open AI"]),
    ("a poster with the text 'HELLO WORLD'.", ["HELLO WORLD"]),
    ("a street sign reading corrodes", ["corrodes"]),
    ("a man reads a book", []),                       # an article after the trigger: nothing to draw
    ("it's a red circle", []),                        # an apostrophe is not a quote
    ("a red circle above a blue square", []),
])
def test_split_spelled_finds_the_text_to_draw(caption, spelled):
    from dalle.tokenizer import split_spelled
    parts = split_spelled(caption)
    assert [t for t, s in parts if s] == spelled
    assert " ".join(t for t, _ in parts).replace(" .", ".") == caption.replace('"', "").replace("“", "") \
        .replace("”", "").replace("'HELLO WORLD'", "HELLO WORLD").replace(" .", ".")


def test_spelled_words_are_characters_with_case_kept(tiny_tokenizer):
    tok = tiny_tokenizer
    assert tok.spells
    ids = tok.token_ids("a storefront that says OpenAI")
    start = ids.index(tok.spell_open)
    chars = ids[start + 1:ids.index(tok.spell_close)]
    assert [tok.id_chars[i] for i in chars] == list("OpenAI")
    assert tok.token_ids("a storefront that says OPENAI") != ids          # case is kept in the word...
    assert tok.token_ids("A STOREFRONT THAT SAYS OpenAI") == ids           # ...and lowered in the rest
    long = TextTokenizer(tok.path, 40, tok.vocab_size)                   # the same file, room for the caption
    assert long.decode(long.encode(['a sign that reads "JAZZ"'])[0]) == 'a sign that reads "JAZZ"'
    # a word never seen in training is as encodable as any other: its letters are tokens
    assert len(tok.token_ids("a sign that says ZUGEVU")) == len(tok.token_ids("a sign that says")) + 2 + 6


def test_a_plain_bpe_file_does_not_spell_and_has_another_identity(tmp_path, tiny_tokenizer):
    rng = random.Random(0)
    caps = [random_caption(rng) for _ in range(50)]
    plain = TextTokenizer(train_tokenizer(caps, VOCAB, tmp_path / "plain.json", spell=False), TEXT_LEN, VOCAB)
    spelled = TextTokenizer(train_tokenizer(caps, VOCAB, tmp_path / "spell.json", spell=True), TEXT_LEN, VOCAB)
    assert not plain.spells and spelled.spells
    assert plain.sha256 != spelled.sha256
    assert plain.tokenizer.token_to_id("<|spell|>") is None
    assert spelled.spell_open in spelled.token_ids("a sign that says JAZZ")
