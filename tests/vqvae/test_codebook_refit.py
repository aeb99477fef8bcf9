"""The colour metric of PatchVQ, refitting a codebook from an earlier one, code renumbering, recolouring."""
import json

import pytest
import torch

from vqvae.kmeans import fit_kmeans, match_codes, to_patches
from vqvae.patch_vq import PatchVQ, PatchVQConfig, metric_space
from vqvae.registry import load_image_tokenizer


def _model(chroma=None, vocab=16, res=16):
    return PatchVQ(PatchVQConfig(resolution=res, patch=4, vocab_size=vocab, n_hid=8, n_blocks=1,
                                 chroma_weight=chroma))


def test_metric_space_is_invertible_and_scales_only_chroma():
    x = torch.rand(5, 48)
    assert torch.equal(metric_space(x, None), x)
    y1, y3 = metric_space(x, 1.0).view(5, 3, 16), metric_space(x, 3.0).view(5, 3, 16)
    assert torch.allclose(y3[:, 0], y1[:, 0]) and torch.allclose(y3[:, 1:], 3 * y1[:, 1:], atol=1e-6)
    m = _model(3.0)
    assert torch.allclose(m._from_metric(metric_space(x, 3.0)), x, atol=1e-5)


def _edge(rgb, coverage, background=(0.96, 0.96, 0.96)):
    """A 4x4 cell: colour ``rgb`` over ``background`` with per-column coverage (an anti-aliased edge)."""
    cov = torch.tensor(coverage).view(1, 1, 4).expand(1, 4, 4)
    c, bg = torch.tensor(rgb).view(3, 1, 1), torch.tensor(background).view(3, 1, 1)
    return (cov * c + (1 - cov) * bg).reshape(1, 48)


def test_chroma_weight_picks_the_code_of_the_right_hue():
    """An orange edge on white: in RGB the nearest of two codes is a yellow edge of the same geometry (a
    yellow fringe, what failed held-out "orange square" reconstructions); weighting chroma 3x picks the
    orange edge one pixel off instead, which keeps the colour."""
    orange, yellow = (245 / 255, 135 / 255, 25 / 255), (240 / 255, 215 / 255, 30 / 255)
    cell = _edge(orange, [1, 1, 0.5, 0])
    centroids = torch.cat([_edge(yellow, [1, 1, 0.5, 0]), _edge(orange, [1, 1, 0, 0])])
    for chroma, want in ((None, 0), (3.0, 1)):
        m = _model(chroma, vocab=2)
        with torch.no_grad():
            m.centroids.copy_(centroids)
            m.fitted.fill_(True)
        assert m.encode_patches(cell).item() == want


def test_a_chroma_weighted_codebook_fits_saves_and_loads_with_identical_codes(tmp_path):
    g = torch.Generator().manual_seed(0)
    x = torch.rand(12, 3, 16, 16, generator=g)
    m = _model(3.0)
    m.fit_codebook(x, iters=3)
    codes = m.encode(x)
    assert codes.min() >= 0 and codes.max() < 16
    back = load_image_tokenizer(m.save(tmp_path / "vq"))
    assert back.config.chroma_weight == 3.0 and torch.equal(back.encode(x), codes)


def test_a_file_written_before_the_chroma_weight_loads_as_rgb(tmp_path):
    m = _model(None)
    m.fit_codebook(torch.rand(12, 3, 16, 16), iters=2)
    path = m.save(tmp_path / "vq")
    cfg = json.loads((path / "vqvae.json").read_text())
    cfg.pop("chroma_weight")
    (path / "vqvae.json").write_text(json.dumps(cfg))
    assert load_image_tokenizer(path).config.chroma_weight is None
    with pytest.raises(ValueError, match="chroma_weight"):
        PatchVQConfig(chroma_weight=0.0)


def test_kmeans_from_an_earlier_codebook_keeps_converged_codes_and_seeds_the_rest():
    g = torch.Generator().manual_seed(0)
    centres = torch.tensor([[0.0, 0.0], [5.0, 5.0], [0.0, 5.0], [9.0, 0.0]])
    x = torch.cat([c + 0.1 * torch.randn(100, 2, generator=g) for c in centres])
    init = torch.tensor([[5.0, 5.0], [0.0, 0.0], [0.0, 5.0]])
    c = fit_kmeans(x, 4, iters=5, init=init)
    assert torch.allclose(c[:3], init, atol=0.1)               # each code kept its index and place
    assert torch.allclose(c[3], centres[3], atol=0.1)          # the new one found the cluster nobody had
    with pytest.raises(ValueError, match="init"):
        fit_kmeans(x, 2, init=init)


def test_match_codes_keeps_the_most_data_on_the_same_index():
    old = torch.tensor([0, 0, 1, 1, 2, 2, 2])
    new = torch.tensor([2, 2, 0, 0, 1, 1, 0])
    order, kept = match_codes(old, new, 3)
    assert order.tolist() == [2, 0, 1] and kept == pytest.approx(6 / 7)
    order, kept = match_codes(old, new, 3, weights=torch.tensor([1.0, 1, 1, 1, 1, 1, 10]))
    assert order[2].item() == 0 and sorted(order.tolist()) == [0, 1, 2]


def test_renumbering_relabels_codes_without_changing_pictures():
    m = _model()
    x = torch.rand(6, 3, 16, 16)
    m.fit_codebook(x, iters=2)
    before_codes, before = m.encode(x), m.decode(m.encode(x))
    order = torch.randperm(16, generator=torch.Generator().manual_seed(3))
    m.renumber(order)
    after_codes = m.encode(x)
    assert torch.equal(order[after_codes], before_codes)
    assert torch.allclose(m.decode(after_codes), before)
    with pytest.raises(ValueError, match="permutation"):
        m.renumber(torch.zeros(16, dtype=torch.long))
