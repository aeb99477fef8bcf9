"""dalle vqvae codebook: recoloured built-in samples, refitting from an earlier codebook, bad input."""
import pytest
import torch

from cli.main import main
from train.data.images import load_images
from vqvae.kmeans import to_patches
from vqvae.registry import load_image_tokenizer
from tests.helpers import scene_and_sign_shards

SMALL = ["--preset", "small", "--set", "vqvae.vocab_size=64", "--set", "vqvae_train.kmeans_iters=4"]


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return scene_and_sign_shards(tmp_path_factory.mktemp("codebook"))


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


def test_the_context_decoder_trains_on_recoloured_caption_less_shards(shards, tmp_path, capsys):
    s, g = str(shards / "scenes"), str(shards / "signs")
    assert main(["data", "recolour", s, g, "--out", str(tmp_path / "rc"), "--copies", "2", "--seed", "1"]) == 0
    assert "read 24, written 48" in capsys.readouterr().err
    assert main(["vqvae", "codebook", s, g, "--images", "12", "--out", str(tmp_path / "cb"), *SMALL]) == 0
    codebook = load_image_tokenizer(tmp_path / "cb")
    assert main(["vqvae", "train", str(tmp_path / "rc"), "--init-from", str(tmp_path / "cb"), "--out",
                 str(tmp_path / "run"), *SMALL, "--set", "vqvae_train.max_steps=3", "--set",
                 "vqvae_train.batch_size=8", "--set", "data.num_workers=0"]) == 0
    trained = load_image_tokenizer(tmp_path / "run" / "export")
    x = load_images(s, 64, 8)
    assert torch.equal(trained.encode(x), codebook.encode(x))          # the codes stay the codebook's
    assert not torch.equal(trained.decode(trained.encode(x)), codebook.decode(codebook.encode(x)))


@pytest.mark.parametrize("args, message", [
    (["/nonexistent/shards"], "shard source not found"),
    (["--copies", "0"], "expected a number >= 1"),
])
def test_bad_recolour_arguments_are_one_line_and_exit_2(shards, tmp_path, capsys, args, message):
    src = [] if args[0].startswith("/") else [str(shards / "scenes")]
    try:
        code = main(["data", "recolour", *src, *args, "--out", str(tmp_path / "rc")])
    except SystemExit as e:                                            # argparse's own errors
        code = e.code
    assert code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]
