"""dalle vqvae codebook: recoloured built-in samples, refitting from an earlier codebook, bad input."""
import pytest
import torch

from cli.main import main
from synth.scenes import build_scenes
from synth.signs import build_signs
from train.data.images import load_images
from vqvae.kmeans import to_patches
from vqvae.registry import load_image_tokenizer

SMALL = ["--preset", "small", "--set", "vqvae.vocab_size=64", "--set", "vqvae_train.kmeans_iters=4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("codebook")
    build_scenes(root / "scenes", 12, seed=1)
    build_signs(root / "signs", 12, seed=2)
    return root


def test_a_codebook_refitted_on_recoloured_samples_keeps_most_patches_on_their_index(shards, tmp_path, capsys):
    s, g = str(shards / "scenes"), str(shards / "signs")
    assert main(["vqvae", "codebook", s, g, "--images", "12", "--out", str(tmp_path / "a"), *SMALL]) == 0
    first = load_image_tokenizer(tmp_path / "a")
    assert first.config.chroma_weight == 2.5                      # the small preset's colour metric
    capsys.readouterr()
    assert main(["vqvae", "codebook", s, g, "--images", "12", "--recolour", "1", "2", "--init-from",
                 str(tmp_path / "a"), "--out", str(tmp_path / "b"), *SMALL]) == 0
    err = capsys.readouterr().err
    share = float(err.split("% of the training patches keep their code index")[0].split()[-1])
    assert 50 < share <= 100
    second = load_image_tokenizer(tmp_path / "b")
    assert not torch.equal(second.centroids, first.centroids)      # refitted on other images
    x = load_images(s, 64, 12)
    cells = to_patches(x, 4).reshape(-1, 48)
    same = (first.encode_patches(cells) == second.encode_patches(cells)).float().mean()
    assert float(same) > 0.5                                        # and still mostly the same codes


@pytest.mark.parametrize("extra, message", [
    (["--images", "5", "6", "7"], "--images takes one number or one per source"),
    (["--recolour", "1", "2", "3"], "--recolour takes one number or one per source"),
    (["--init-from", "/nonexistent/codebook"], "no such directory"),
])
def test_bad_codebook_arguments_are_one_line_and_exit_2(shards, tmp_path, capsys, extra, message):
    s, g = str(shards / "scenes"), str(shards / "signs")
    assert main(["vqvae", "codebook", s, g, "--out", str(tmp_path / "c"), *SMALL, *extra]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
