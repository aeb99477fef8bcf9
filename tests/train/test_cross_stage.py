"""Stage 2 reads the image vocabulary, code grid and resolution from the trained image tokenizer."""
import torch

from cli.main import main
from dalle import Dalle
from train.config import load_preset, with_image_tokenizer
from vqvae.model import DiscreteVAE


def test_with_image_tokenizer_takes_the_artefacts_values():
    preset = load_preset("tiny")
    trained = load_preset("tiny", ["vqvae.vocab_size=64", "vqvae.resolution=32"]).vqvae
    got = with_image_tokenizer(preset, trained)
    assert (got.dalle.image_vocab_size, got.dalle.image_grid, got.data.resolution) == (64, 8, 32)
    assert got.vqvae == trained and got.dalle.n_layer == preset.dalle.n_layer
    assert preset.dalle.image_vocab_size != 64                          # the input preset is left as it was


def test_tokens_and_train_need_no_repeated_set_for_a_tokenizer_trained_with_one(tmp_path, image_shards,
                                                                                tiny_tokenizer):
    from train.dalle_fit import fit_dalle

    trained = load_preset("tiny", ["vqvae.vocab_size=64", "vqvae.resolution=32"]).vqvae  # `dalle vqvae train --set ...`
    torch.manual_seed(0)
    vq_dir = DiscreteVAE(trained).save(tmp_path / "vqvae")
    shards = [str(p) for p in image_shards(n=8, size=40)]
    assert main(["tokens", *shards, "--vqvae", str(vq_dir), "--out", str(tmp_path / "tokens"), "--preset", "tiny",
                 "--device", "cpu"]) == 0
    token_shards = sorted(str(p) for p in (tmp_path / "tokens").glob("*.tar"))
    assert token_shards
    preset = load_preset("tiny", ["dalle_train.max_steps=2", "dalle_train.batch_size=4",
                                  "dalle_train.image_every=0"])
    path = fit_dalle(preset, tmp_path / "run", tokenizer_path=tiny_tokenizer.path, vqvae_dir=vq_dir,
                     token_shards=token_shards, enable_progress_bar=False, accelerator="cpu")
    model = Dalle.from_pretrained(path, device="cpu")
    assert (model.config.image_vocab_size, model.config.image_grid, model.resolution) == (64, 8, 32)
    assert model.generate(["a red square"], n=1)[0].image.size == (32, 32)


def test_code_init_from_the_codebook_needs_and_uses_a_patch_vq(tmp_path, tiny_tokenizer):
    import pytest

    from dalle.bundle import load_bundle
    from tests.train.test_resume import write_token_shards
    from train.dalle_fit import fit_dalle
    from vqvae.patch_vq import PatchVQ, PatchVQConfig

    cfg = PatchVQConfig(resolution=32, patch=4, vocab_size=64, n_hid=8, n_blocks=0)
    vq = PatchVQ(cfg)
    g = torch.Generator().manual_seed(0)
    vq.fit_codebook(torch.rand(16, 3, 32, 32, generator=g), iters=3)
    vq_dir = vq.save(tmp_path / "patchvq")
    preset = load_preset("tiny", ["dalle_train.max_steps=1", "dalle_train.batch_size=4", "dalle_train.image_every=0",
                                  "dalle_train.lr=1.0e-6", "dalle_train.code_init=codebook"])
    preset = with_image_tokenizer(preset, vq.config)
    shards = write_token_shards(tmp_path / "tokens", preset, n_shards=1, per_shard=8)
    path = fit_dalle(preset, tmp_path / "run", tokenizer_path=tiny_tokenizer.path, vqvae_dir=vq_dir,
                     token_shards=shards, enable_progress_bar=False, accelerator="cpu")
    emb = load_bundle(path).model.image_emb.weight.float()
    c = vq.code_vectors()
    off = ~torch.eye(c.shape[0], dtype=torch.bool)
    dist_e, dist_c = torch.cdist(emb, emb)[off], torch.cdist(c, c)[off]
    assert torch.corrcoef(torch.stack([dist_e, dist_c]))[0, 1] > 0.6

    dvae_dir = DiscreteVAE(load_preset("tiny").vqvae).save(tmp_path / "dvae")
    with pytest.raises(ValueError, match="code_init=codebook needs vqvae_dir with a PatchVQ"):
        fit_dalle(load_preset("tiny", ["dalle_train.code_init=codebook"]), tmp_path / "run2",
                  tokenizer_path=tiny_tokenizer.path, vqvae_dir=dvae_dir, token_shards=shards,
                  enable_progress_bar=False, accelerator="cpu")


def test_a_time_budget_stops_training_early_and_still_writes_the_bundle(tmp_path, tiny_tokenizer):
    import pytest

    from dalle.bundle import load_bundle
    from tests.train.test_resume import write_token_shards
    from train.dalle_fit import fit_dalle

    with pytest.raises(ValueError, match="max_minutes"):
        load_preset("tiny", ["dalle_train.max_minutes=-1"])
    preset = load_preset("tiny", ["dalle_train.max_steps=100000", "dalle_train.batch_size=4",
                                  "dalle_train.image_every=0", "dalle_train.max_minutes=0.01"])   # 0.6 s
    shards = write_token_shards(tmp_path / "tokens", preset, n_shards=1, per_shard=8)
    vq_dir = DiscreteVAE(preset.vqvae).save(tmp_path / "dvae")
    path = fit_dalle(preset, tmp_path / "run", tokenizer_path=tiny_tokenizer.path, vqvae_dir=vq_dir,
                     token_shards=shards, enable_progress_bar=False, accelerator="cpu")
    steps = load_bundle(path).meta["global_step"]
    assert 0 < steps < 100000
