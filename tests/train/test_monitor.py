"""Watching training: CSV / TensorBoard scalars and images, the step progress bar, the summary, the model card."""
from __future__ import annotations

import csv
import logging
import random

import pytest
import yaml

from tests.helpers import encode_image, random_caption, random_image
from train.config import load_preset
from common.shards import ShardWriter

VQVAE_TAGS = {"train/loss", "train/recon", "train/kl", "train/grad_norm", "train/samples_per_s", "lr-AdamW/pg1",
              "codebook/usage", "codebook/dead", "codebook/perplexity", "skipped/corrupt_image"}
DALLE_TAGS = {"train/loss", "train/text_loss", "train/image_loss", "train/grad_norm", "train/tokens_per_s",
              "train/samples_per_s", "lr-AdamW/decay", "data/skipped_corrupt_image"}


def write_shards(path, n=24):
    """Random 24 px images with captions, and two corrupt images (counted as skipped)."""
    import numpy as np
    rng, cap = np.random.default_rng(0), random.Random(0)
    with ShardWriter(path, max_samples=n + 2) as w:
        for i in range(n + 2):
            data = b"definitely not a png" if i in (3, 11) else encode_image(random_image(rng, 24), "png")
            w.write_sample(f"{i:09d}", image=data, image_ext="png", caption=random_caption(cap))
    return [str(p) for p in w.paths]


def event_tags(run_dir):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
    files = list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert files, f"no event file under {run_dir / 'tensorboard'}"
    acc = EventAccumulator(str(files[0].parent), size_guidance={"images": 0, "scalars": 0})
    acc.Reload()
    return acc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """A dVAE run and then a transformer run (on the fly, on its export), both with TensorBoard."""
    pytest.importorskip("tensorboard", reason="the tensorboard extra is not installed")
    from train.dalle_fit import fit_dalle
    from train.text_tokenizer import train_tokenizer
    from train.vqvae_fit import fit_vqvae
    root = tmp_path_factory.mktemp("monitor")
    shards = write_shards(root / "shards")
    common = ["data.shuffle_buffer=4"]
    vq_preset = load_preset("tiny", common + ["vqvae_train.max_steps=6", "vqvae_train.log_every=2",
                                              "vqvae_train.image_every=3", "vqvae_train.logger=tensorboard"])
    records: list[logging.LogRecord] = []
    handler = logging.Handler()
    handler.emit = records.append
    logging.getLogger("train").addHandler(handler)
    logging.getLogger("train").setLevel(logging.INFO)
    try:
        export = fit_vqvae(vq_preset, root / "vq", train_shards=shards, enable_progress_bar=False)
        rng = random.Random(0)
        tok = train_tokenizer([random_caption(rng) for _ in range(200)], vq_preset.dalle.text_vocab_size,
                              root / "tokenizer.json", lowercase=True)
        d_preset = load_preset("tiny", common + ["dalle_train.max_steps=6", "dalle_train.log_every=2",
                                                 "dalle_train.image_every=3", "dalle_train.logger=tensorboard",
                                                 "dalle_train.sample_prompts=[a red square, a blue circle]"])
        bundle = fit_dalle(d_preset, root / "dalle", tokenizer_path=tok, vqvae_dir=export, image_shards=shards,
                           enable_progress_bar=False)
    finally:
        logging.getLogger("train").removeHandler(handler)
    return root, export, bundle, [r.getMessage() for r in records]


def test_tokenizer_run_logs_scalars_and_reconstruction_grids_to_tensorboard(runs):
    root, export, _, _ = runs
    acc = event_tags(root / "vq")
    assert VQVAE_TAGS <= set(acc.Tags()["scalars"]), VQVAE_TAGS - set(acc.Tags()["scalars"])
    assert acc.Scalars("skipped/corrupt_image")[-1].value in (2, 4)   # two bad images per pass over the data
    images = acc.Images("images/reconstructions")
    assert [e.step for e in images] == [3, 6]
    assert images[0].width == 8 * 17 + 1 and images[0].height == 2 * 17 + 1    # 8 originals over 8 recons
    with open(root / "vq" / "logs" / "metrics.csv") as f:      # the CSV is written too
        header = next(csv.reader(f))
    assert {"train/grad_norm", "codebook/usage", "lr-AdamW/pg1"} <= set(header)


def test_transformer_run_logs_both_losses_and_sample_grids(runs):
    root, _, bundle, _ = runs
    acc = event_tags(root / "dalle")
    assert DALLE_TAGS <= set(acc.Tags()["scalars"]), DALLE_TAGS - set(acc.Tags()["scalars"])
    samples = acc.Images("images/samples")
    assert [e.step for e in samples] == [3, 6]
    assert samples[0].width == 2 * 16 + 3 * 2 and samples[0].height == 16 + 2 * 2   # two prompts, one row
    assert (root / "dalle" / "images" / "samples_step_000003.png").is_file()


def test_each_run_ends_with_a_summary_paragraph(runs):
    root, export, bundle, messages = runs
    vq = [m for m in messages if m.startswith("Trained the dVAE")]
    tr = [m for m in messages if m.startswith("Trained the transformer")]
    assert len(vq) == 1 and "to step 6 of 6: 6 steps on 48 samples" in vq[0] and str(export) in vq[0]
    assert "Final loss" in vq[0] and "samples/s" in vq[0]
    assert len(tr) == 1 and "text loss" in tr[0] and "image loss" in tr[0] and str(bundle) in tr[0]


def test_the_bundle_is_a_hub_model_folder_with_a_model_card(runs):
    _, _, bundle, _ = runs
    text = (bundle / "README.md").read_text()
    assert text.startswith("---\n")
    header = yaml.safe_load(text.split("---\n")[1])
    assert header["pipeline_tag"] == "text-to-image" and header["license"] == "mit"
    assert "text-to-image" in header["tags"] and header["datasets"] == ["shards"]
    assert "Dalle.from_pretrained" in text and "| steps | 6 |" in text


def test_the_progress_bar_counts_steps_with_a_total_and_shows_samples_per_second(tmp_path, capsys):
    from train.vqvae_fit import fit_vqvae
    shards = write_shards(tmp_path / "shards", 16)
    preset = load_preset("tiny", ["vqvae_train.max_steps=5", "data.shuffle_buffer=4", "vqvae_train.image_every=0"])
    fit_vqvae(preset, tmp_path / "run", train_shards=shards, enable_progress_bar=True)
    captured = capsys.readouterr()
    err = captured.out + captured.err
    last = err.replace("\r", "\n").strip().splitlines()[-1]
    assert "5/5 [" in last and "samples/s=" in last, last
    assert "?" not in last, last                          # a total and an ETA, not Lightning's "?" for streams
    assert any("/5 [" in line and "<00:" in line for line in err.replace("\r", "\n").splitlines()[:-1])


def test_an_unknown_logger_is_a_clear_error():
    with pytest.raises(ValueError, match="logger must be one of"):
        load_preset("tiny", ["vqvae_train.logger=wandb"])


def test_the_progress_bar_counts_steps_of_max_steps_after_a_resume(tmp_path, tiny_preset, tiny_tokenizer, capfd):
    from tests.train.test_resume import write_token_shards
    from train.config import load_preset
    from train.dalle_fit import fit_dalle

    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=1, per_shard=16)
    common = ["dalle_train.batch_size=4", "dalle_train.ckpt_every=1", "dalle_train.image_every=0"]
    for steps in (2, 4):
        fit_dalle(load_preset("tiny", common + [f"dalle_train.max_steps={steps}"]), tmp_path / "run",
                  tokenizer_path=tiny_tokenizer.path, token_shards=shards, accelerator="cpu",
                  enable_model_summary=False)
        out = "".join(capfd.readouterr())                         # tqdm writes to stdout
        bars = [seg for seg in out.split("\r") if "step" in seg and "|" in seg]
        assert bars and f"{steps}/{steps} [" in bars[-1]            # the resumed run too: steps out of max_steps


def test_the_model_card_names_the_image_tokenizer_it_describes():
    from dalle.config import DalleConfig
    from dalle.model_card import model_card
    from vqvae.config import VQVAEConfig
    from vqvae.patch_vq import PatchVQConfig

    meta = {"preset": "small", "global_step": 7}
    patch = model_card(DalleConfig(), PatchVQConfig(vocab_size=8192), meta)
    dvae = model_card(DalleConfig(), VQVAEConfig(), meta)
    assert "k-means codebook of pixel patches" in patch and "discrete VAE" not in patch
    assert "codes out of 8192" in patch
    assert "discrete VAE" in dvae and "k-means" not in dvae
    weighted = model_card(DalleConfig(), PatchVQConfig(vocab_size=8192, chroma_weight=2.5), meta)
    assert "luma + 2.5 x chroma" in weighted and "chroma" not in patch
