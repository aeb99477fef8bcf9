"""Within-word positions of spelled text (``dalle.spell_pos``): where each character sits in its word."""
import dataclasses

import pytest
import torch

from dalle.config import DalleConfig
from dalle.model import DalleTransformer, spell_positions
from train.config import load_preset

O, C = 1, 2     # spelling tokens of these hand-made rows


def test_positions_count_from_both_ends_of_each_word():
    rows = torch.tensor([[9, 9, O, 5, 6, 7, C, 9, 0, 0],        # one word of three letters
                         [O, 5, C, 9, O, 6, 7, C, 0, 0],        # two words
                         [9, 9, 9, 9, 9, 9, 9, 9, 0, 0],        # nothing spelled
                         [9, 9, 9, O, 5, 6, 7, 8, 5, 0]])       # cut off by truncation: runs to the end
    start, end, inside = spell_positions(rows, O, C)
    assert inside.int().tolist() == [[0, 0, 0, 1, 1, 1, 0, 0, 0, 0],
                                     [0, 1, 0, 0, 0, 1, 1, 0, 0, 0],
                                     [0] * 10,
                                     [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]]
    assert start.tolist() == [[0, 0, 0, 0, 1, 2, 0, 0, 0, 0],
                              [0, 0, 0, 0, 0, 0, 1, 0, 0, 0],
                              [0] * 10,
                              [0, 0, 0, 0, 0, 1, 2, 3, 4, 5]]
    assert end.tolist() == [[0, 0, 0, 2, 1, 0, 0, 0, 0, 0],
                            [0, 0, 0, 0, 0, 1, 0, 0, 0, 0],
                            [0] * 10,
                            [0, 0, 0, 0, 5, 4, 3, 2, 1, 0]]


def spell_cfg(n: int = 4) -> DalleConfig:
    return dataclasses.replace(load_preset("tiny").dalle, spell_pos=n, spell_open_id=O, spell_close_id=C)


def test_the_tables_start_at_zero_and_change_only_spelled_captions():
    cfg = spell_cfg()
    plain = DalleTransformer(dataclasses.replace(cfg, spell_pos=0, spell_open_id=-1, spell_close_id=-1)).eval()
    model = DalleTransformer(cfg).eval()
    missing, unexpected = model.load_state_dict(plain.state_dict(), strict=False)
    assert sorted(missing) == ["spell_centre.weight", "spell_end.weight", "spell_start.weight"] and not unexpected
    assert model.spell_centre.weight.shape == (2 * 4 - 1, cfg.n_embd)
    g = torch.Generator().manual_seed(0)
    text = torch.randint(3, cfg.text_vocab_size, (2, cfg.text_len), generator=g)
    text[0, 1:5] = torch.tensor([O, 5, 6, C])                  # row 0 spells a word, row 1 does not
    image = torch.randint(0, cfg.image_vocab_size, (2, cfg.image_len - 1), generator=g)
    with torch.no_grad():
        torch.testing.assert_close(model(text, image).image, plain(text, image).image)   # zero tables: unchanged
        for p in (model.spell_start.weight, model.spell_end.weight, model.spell_centre.weight):
            p.normal_(0, 0.5, generator=g)
        out, base = model(text, image).image, plain(text, image).image
    assert not torch.allclose(out[0], base[0])
    torch.testing.assert_close(out[1], base[1])


def test_cached_sampling_sees_the_same_positions():
    cfg = spell_cfg()
    model = DalleTransformer(cfg).eval()
    g = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in (model.spell_start.weight, model.spell_end.weight, model.spell_centre.weight):
            p.normal_(0, 0.5, generator=g)
    text = torch.randint(3, cfg.text_vocab_size, (2, cfg.text_len), generator=g)
    text[:, 0:6] = torch.tensor([O, 5, 6, 7, 8, C])           # longer than spell_pos: indices are clamped
    image = torch.randint(0, cfg.image_vocab_size, (2, cfg.image_len - 1), generator=g)
    with torch.inference_mode():
        full = model(text, image).image
        model.setup_cache(2)
        parts = [model.prefill(text, image[:, :0]).image]
        for j in range(cfg.image_len - 1):
            parts.append(model.decode_step(image[:, j:j + 1], torch.tensor([cfg.text_len + j])))
    torch.testing.assert_close(torch.cat(parts, 1), full, atol=1e-5, rtol=0)


def test_config_checks_and_configs_saved_before_the_option_still_load():
    cfg = load_preset("tiny").dalle
    saved = cfg.to_dict()
    for key in DalleConfig.ADDED_LATER:
        del saved[key]
    assert DalleConfig.from_dict(saved, complete=True) == cfg          # an older dalle.json
    del saved["n_layer"]
    with pytest.raises(ValueError, match="missing"):
        DalleConfig.from_dict(saved, complete=True)
    with pytest.raises(ValueError, match="spell_pos must be >= 0"):
        dataclasses.replace(cfg, spell_pos=-1)
    with pytest.raises(ValueError, match="two text token ids"):
        dataclasses.replace(cfg, spell_open_id=3, spell_close_id=3)
    with pytest.raises(ValueError, match="needs spell_open_id"):
        DalleTransformer(dataclasses.replace(cfg, spell_pos=4))       # ids unset: training sets them


def test_a_bundle_loads_only_with_the_tokenizer_whose_spelling_ids_it_was_trained_with(tmp_path, tiny_tokenizer):
    from dalle.bundle import BundleError, load_bundle, save_bundle
    from tests.bundles import CORPUS
    from tests.helpers import write_bpe
    from vqvae.model import DiscreteVAE

    preset = load_preset("tiny")
    vqvae = DiscreteVAE(preset.vqvae).eval()
    cfg = dataclasses.replace(preset.dalle, spell_pos=4, spell_open_id=tiny_tokenizer.spell_open,
                              spell_close_id=tiny_tokenizer.spell_close)
    ok = save_bundle(tmp_path / "ok", model=DalleTransformer(cfg), vqvae=vqvae, tokenizer_path=tiny_tokenizer.path)
    assert load_bundle(ok).model.config == cfg
    plain = write_bpe(tmp_path / "plain.json", CORPUS)                       # no spelling tokens at all
    bad = save_bundle(tmp_path / "bad", model=DalleTransformer(cfg), vqvae=vqvae, tokenizer_path=plain)
    with pytest.raises(BundleError, match="spelling token ids"):
        load_bundle(bad)
