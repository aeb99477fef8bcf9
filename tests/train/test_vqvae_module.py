import csv
import dataclasses
import io
import math

import lightning as L
import numpy as np
import pytest
import torch
from PIL import Image

from train.codebook import CodeUsage, restart_dead_codes
from train.config import load_preset
from train.trainer import build_trainer, latest_checkpoint
from train.vqvae_fit import fit_vqvae
from train.vqvae_module import VQVAEModule, kl_weight_at, temperature_at
from vqvae import DiscreteVAE



# ---- schedules -------------------------------------------------------------------------------
def test_temperature_schedule_endpoints_and_monotonic():
    temps = [temperature_at(s, start=1.0, end=1 / 16, anneal_steps=100) for s in range(0, 130)]
    assert temps[0] == pytest.approx(1.0) and temps[100] == pytest.approx(1 / 16)
    assert all(t == pytest.approx(1 / 16) for t in temps[100:])
    assert all(a > b for a, b in zip(temps[:100], temps[1:101]))
    assert temperature_at(5, start=1.0, end=0.5, anneal_steps=0) == 0.5


def test_temperature_is_geometric():
    assert temperature_at(50, start=1.0, end=1 / 16, anneal_steps=100) == pytest.approx(0.25)


def test_kl_weight_warmup_endpoints_monotonic_and_a_half_cosine():
    w = [kl_weight_at(s, kl_weight=6.6, warmup_steps=50) for s in range(0, 80)]
    assert w[0] == 0.0 and w[50] == pytest.approx(6.6) and w[79] == pytest.approx(6.6)
    assert all(a < b for a, b in zip(w[:50], w[1:51]))
    assert w[25] == pytest.approx(3.3) and w[10] < 6.6 * 10 / 50      # slower than linear at first
    assert kl_weight_at(0, kl_weight=2.0, warmup_steps=0) == 2.0


# ---- codebook --------------------------------------------------------------------------------
def test_code_usage_window_statistics_and_state():
    u = CodeUsage(vocab_size=8, window=10)
    assert float(u.usage()) == 0.0 and float(u.perplexity()) == 0.0 and not u.full
    u.update(torch.tensor([0, 1, 2, 3]))
    assert float(u.usage()) == pytest.approx(4 / 8)
    assert float(u.perplexity()) == pytest.approx(4.0)
    u.update(torch.full((8,), 7))          # wraps: keeps 2, 3 and eight 7s
    assert u.full and u.counts().tolist() == [0, 0, 1, 1, 0, 0, 0, 8]
    assert u.dead_codes().tolist() == [0, 1, 4, 5, 6]
    assert int(u.n_dead()) == 5
    p = torch.tensor([0.1, 0.1, 0.8])
    assert float(u.perplexity()) == pytest.approx(math.exp(float(-(p * p.log()).sum())), rel=1e-5)
    u.update(torch.arange(25) % 8)          # longer than the window: keeps the last 10
    assert u.counts().sum() == 10 and float(u.usage()) == 1.0

    v = CodeUsage(vocab_size=8, window=10)
    v.load_state_dict(u.state_dict())
    assert v.counts().tolist() == u.counts().tolist() and v.full and v.seen == u.seen
    # the restored window also forgets the same codes next: same counts after the same updates
    for w in (u, v):
        w.update(torch.full((3,), 6))
    assert v.counts().tolist() == u.counts().tolist() != (torch.arange(25) % 8)[-10:].bincount(minlength=8).tolist()


def test_restart_waits_for_a_full_window():
    u = CodeUsage(vocab_size=8, window=4)
    u.update(torch.tensor([1, 1, 1]))
    assert not u.due_for_restart(0.9)       # window not full yet
    u.update(torch.tensor([1]))
    assert u.due_for_restart(0.9)
    u.mark_restart()
    u.update(torch.tensor([1, 1]))
    assert not u.due_for_restart(0.9)       # a whole window must pass after a restart
    u.update(torch.tensor([1, 1]))
    assert u.due_for_restart(0.9) and not u.due_for_restart(0.1)


def test_restart_dead_codes_uses_batch_features():
    cfg = load_preset("tiny").vqvae
    torch.manual_seed(0)
    model = DiscreteVAE(cfg)
    images = torch.rand(2, 3, 16, 16)
    out = model(images, 1.0, noise=False)
    dead = torch.tensor([3, 17])
    head, dec_in = model.encoder.head[-1], model.decoder.input
    w_dec_before = dec_in.weight.detach().clone().flatten(1)
    n = restart_dead_codes(model, dead, out.features, generator=torch.Generator().manual_seed(0))
    assert n == 2
    feats = torch.relu(out.features).permute(0, 2, 3, 1).reshape(-1, out.features.shape[1])
    rows = head.weight.detach().flatten(1)[dead]                            # (2, F)
    cos = torch.nn.functional.cosine_similarity(rows[:, None], feats[None], dim=-1)
    assert torch.allclose(cos.max(dim=1).values, torch.ones(2), atol=1e-5)   # each row is a batch feature
    live = torch.ones(cfg.vocab_size, dtype=torch.bool)
    live[dead] = False
    mean_norm = head.weight.detach().flatten(1)[live].norm(dim=1).mean()
    torch.testing.assert_close(rows.norm(dim=1), mean_norm.expand(2))
    cols = dec_in.weight.detach().flatten(1)[:, dead]                      # copies of existing columns
    for j in range(2):
        assert any(torch.equal(cols[:, j], w_dec_before[:, k]) for k in range(cfg.vocab_size) if live[k])
    assert restart_dead_codes(model, torch.tensor([], dtype=torch.long), out.features) == 0


# ---- training --------------------------------------------------------------------------------
def _pattern_images(n: int, res: int, seed: int) -> torch.Tensor:
    """Learnable images: two-colour halves with random colours and split positions."""
    g = torch.Generator().manual_seed(seed)
    imgs = torch.empty(n, 3, res, res)
    for i in range(n):
        a, b = torch.rand(3, generator=g), torch.rand(3, generator=g)
        cut = int(torch.randint(2, res - 2, (1,), generator=g))
        imgs[i, :, :, :cut] = a[:, None, None]
        imgs[i, :, :, cut:] = b[:, None, None]
    return imgs


class _Batches(torch.utils.data.IterableDataset):
    def __init__(self, n_batches: int, batch_size: int, res: int):
        self.n_batches, self.batch_size, self.res = n_batches, batch_size, res

    def __iter__(self):
        for i in range(self.n_batches):
            yield {"images": _pattern_images(self.batch_size, self.res, i), "captions": [""] * self.batch_size,
                   "keys": [str(i)] * self.batch_size, "skipped": {"corrupt_image": 1} if i % 2 else {}}


class _LossRecorder(L.Callback):
    def __init__(self):
        self.losses: list[float] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses.append(float(outputs["loss"]))


def _loader(n_batches, cfg):
    return torch.utils.data.DataLoader(_Batches(n_batches, cfg.vqvae_train.batch_size, cfg.vqvae.resolution),
                                       batch_size=None)


def test_module_logs_saves_grids_checkpoints_and_resumes(tmp_path):
    preset = load_preset("tiny", ["vqvae_train.max_steps=10", "vqvae_train.usage_window=64",
                                  "vqvae_train.image_every=5", "vqvae_train.ckpt_every=5",
                                  "vqvae_train.log_every=5", "vqvae_train.val_every=10"])
    module = VQVAEModule(preset.vqvae, preset.vqvae_train, tmp_path)
    trainer = build_trainer(preset.vqvae_train, tmp_path, enable_progress_bar=False)
    trainer.fit(module, train_dataloaders=_loader(100, preset), val_dataloaders=_loader(2, preset))
    assert trainer.global_step == 10

    rows = list(csv.DictReader(open(tmp_path / "logs" / "metrics.csv")))
    keys = set().union(*(r.keys() for r in rows))
    for k in ("train/loss", "train/recon", "train/kl", "train/psnr", "train/temperature", "train/kl_weight",
              "train/psnr_hard", "codebook/usage", "codebook/perplexity", "codebook/dead",
              "skipped/corrupt_image", "val/recon", "val/psnr", "val/kl"):
        assert k in keys, k
    skipped = [float(r["skipped/corrupt_image"]) for r in rows if r.get("skipped/corrupt_image")]
    assert skipped == [2.0, 5.0]            # cumulative: batches 1, 3 (step 5), then 5, 7, 9 (step 10)
    usage = [float(r["codebook/usage"]) for r in rows if r.get("codebook/usage")]
    assert all(0 < u <= 1 for u in usage)

    grids = sorted(p.name for p in (tmp_path / "images").glob("*.png"))
    assert grids == ["step_000005.png", "step_000010.png"]
    grid = Image.open(tmp_path / "images" / "step_000010.png")
    assert grid.size == (8 * 17 + 1, 2 * 17 + 1)   # 8 originals over 8 reconstructions, 1 px padding

    ckpt = latest_checkpoint(tmp_path)
    state = torch.load(ckpt, weights_only=True)
    assert state["skipped_total"] == {"corrupt_image": 5}
    restored = VQVAEModule(preset.vqvae, preset.vqvae_train, tmp_path)     # the code-usage window travels
    restored.load_state_dict(state["state_dict"])
    assert restored.usage.counts().tolist() == module.usage.counts().tolist()
    assert restored.usage.seen == module.usage.seen > 0 and restored.usage.full == module.usage.full
    assert not any(k.startswith("_forward") for k in state["state_dict"])

    resumed = VQVAEModule(preset.vqvae, preset.vqvae_train, tmp_path)
    more = load_preset("tiny", ["vqvae_train.max_steps=12", "vqvae_train.usage_window=64",
                                "vqvae_train.log_every=5", "vqvae_train.image_every=0"]).vqvae_train
    trainer2 = build_trainer(more, tmp_path, enable_progress_bar=False, logger=False)
    trainer2.fit(resumed, train_dataloaders=_loader(100, preset), ckpt_path=str(ckpt))
    assert trainer2.global_step == 12
    assert resumed.usage.seen == module.usage.seen + 2 * 8 * 16
    trainer2.save_checkpoint(tmp_path / "resumed.ckpt")            # the skips of both runs are recorded
    assert torch.load(tmp_path / "resumed.ckpt", weights_only=True)["skipped_total"] == {"corrupt_image": 6}

    module.export(tmp_path / "export")
    loaded = DiscreteVAE.from_checkpoint(tmp_path / "export")
    images = _pattern_images(4, 16, 123)
    assert torch.equal(loaded.encode(images), module.model.eval().encode(images))


def test_dead_codes_are_restarted_during_training(tmp_path):
    # One constant image: almost every code is dead, so usage stays below target.
    preset = load_preset("tiny", ["vqvae_train.max_steps=6", "vqvae_train.usage_window=32",
                                  "vqvae_train.image_every=0", "vqvae_train.usage_target=0.99"])
    module = VQVAEModule(preset.vqvae, preset.vqvae_train, tmp_path)
    head = module.model.encoder.head[-1].weight
    before = head.detach().clone()
    data = [{"images": torch.full((8, 3, 16, 16), 0.3), "skipped": {}}] * 6
    trainer = build_trainer(preset.vqvae_train, tmp_path, enable_progress_bar=False, logger=False)
    trainer.fit(module, train_dataloaders=torch.utils.data.DataLoader(data, batch_size=None))
    assert module.codes_restarted > 0
    assert module.usage.seen_at_restart > 0
    # The restarted rows all point along the same (constant-image) feature direction.
    rows = head.detach().flatten(1)
    moved = (rows - before.flatten(1)).norm(dim=1) > 0
    assert int(moved.sum()) >= module.codes_restarted // 6


class _HeldOutLoss(L.Callback):
    """Deterministic loss of the tokenizer as used (argmax codes -> decoder) on fixed images."""

    def __init__(self, images: torch.Tensor):
        self.images, self.values = images, []

    @torch.no_grad()
    def _measure(self, pl_module):
        model = pl_module.model
        codes = model.encode(self.images)
        one_hot = torch.nn.functional.one_hot(codes, model.config.vocab_size).permute(0, 3, 1, 2).float()
        self.values.append(float(model.likelihood.nll(self.images, model.decoder(one_hot))))

    def on_train_start(self, trainer, pl_module):
        self._measure(pl_module)

    def on_train_end(self, trainer, pl_module):
        self._measure(pl_module)


def _write_pattern_shard(out_dir, n: int, size: int) -> torch.Tensor:
    from common.shards import ShardWriter

    images = _pattern_images(n, size, seed=7)
    with ShardWriter(out_dir, max_samples=n) as w:
        for i, img in enumerate(images):
            buf = io.BytesIO()
            Image.fromarray((img.permute(1, 2, 0).numpy() * 255).astype(np.uint8)).save(buf, format="PNG")
            w.write_sample(f"{i:09d}", image=buf.getvalue(), image_ext="png", caption=f"pattern {i}")
    return images


def test_real_trainer_fit_on_a_real_shard_lowers_the_loss(tmp_path):
    # Learnable two-colour images rather than conftest's random-noise shards: on noise the
    # tokenizer has nothing to learn in 40 steps, so "the loss went down" would test little.
    # The tiny preset's 40 steps at lr 1e-3 barely move the dVAE; a larger lr makes the test decisive.
    preset = load_preset("tiny", ["vqvae_train.lr=1.0e-2", "vqvae_train.image_every=20",
                                  "data.shuffle_buffer=8"])
    _write_pattern_shard(tmp_path / "shards", 64, 24)   # centre-cropped to 16 by the loader
    recorder, held_out = _LossRecorder(), _HeldOutLoss(_pattern_images(16, 16, seed=1234))
    out = tmp_path / "run"
    export = fit_vqvae(preset, out, train_shards=[str(tmp_path / "shards")], callbacks=[recorder, held_out],
                       enable_progress_bar=False)
    assert len(recorder.losses) == preset.vqvae_train.max_steps == 40
    assert np.mean(recorder.losses[-10:]) < np.mean(recorder.losses[:10]) - 0.05
    before, after = held_out.values           # argmax codes -> decoder, on images never trained on
    assert after < before - 0.05, (before, after)
    assert (out / "images" / "step_000020.png").is_file()
    assert (out / "checkpoints" / "last.ckpt").is_file()
    model = DiscreteVAE.from_checkpoint(export)
    assert model.encode(held_out.images[:2]).shape == (2, 4, 4)
    # Resuming a finished run does not train further and re-exports the same weights.
    again = fit_vqvae(preset, out, train_shards=[str(tmp_path / "shards")], enable_progress_bar=False)
    assert torch.equal(DiscreteVAE.from_checkpoint(again).decoder.input.weight, model.decoder.input.weight)


def test_the_compiled_forward_is_held_out_of_the_state_dict():
    """Stage 1 holds its compiled forward as stage 2 holds its frozen tokenizer (``train.frozen.hold``):
    the checkpoint has the plain model's keys and the optimizer sees each parameter once."""
    preset = load_preset("tiny")
    plain = VQVAEModule(preset.vqvae, preset.vqvae_train)
    compiled = VQVAEModule(preset.vqvae, dataclasses.replace(preset.vqvae_train, compile=True))
    compiled.configure_model()                       # torch.compile wraps lazily: nothing is compiled here
    assert compiled._forward is not compiled.model and "_forward" not in dict(compiled.named_children())
    assert list(compiled.state_dict()) == list(plain.state_dict())
    assert len(list(compiled.parameters())) == len(list(plain.parameters()))
