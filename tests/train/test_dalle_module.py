"""DalleModule: loss, caption dropout, non-finite steps, optimizer groups, overfitting."""
from __future__ import annotations

import dataclasses
import itertools
import logging

import lightning as L
import pytest
import torch
import torch.nn.functional as F
from torch import nn

from dalle.model import Logits
from train.config import load_preset
from train.dalle_module import DalleModule, dalle_loss, drop_captions, null_text_tokens
from train.optim import build_optimizer, build_scheduler, param_groups
from train.trainer import build_trainer



def tiny(**train_overrides):
    preset = load_preset("tiny")
    return preset.dalle, dataclasses.replace(preset.dalle_train, **train_overrides)


def token_batch(cfg, batch: int, seed: int = 0, n_words: int = 3) -> dict:
    """Captions of a few BPE ids + pads, random image codes."""
    g = torch.Generator().manual_seed(seed)
    text = null_text_tokens(cfg, batch)
    text[:, :n_words] = torch.randint(0, cfg.text_vocab_size, (batch, n_words), generator=g)
    image = torch.randint(0, cfg.image_vocab_size, (batch, cfg.image_len), generator=g)
    return {"text_tokens": text, "image_tokens": image, "captions": [f"c{i}" for i in range(batch)],
            "keys": [f"{seed:04d}-{i}" for i in range(batch)], "skipped": {}}


def make_module(**train_overrides) -> DalleModule:
    dalle_cfg, train_cfg = tiny(**train_overrides)
    module = DalleModule(dalle_cfg, train_cfg, tokenizer_sha256="0" * 64)
    module.configure_model()
    return module


# ---- loss --------------------------------------------------------------------------------
def test_loss_targets_are_shifted_text_and_unshifted_image():
    dalle_cfg, _ = tiny()
    batch = token_batch(dalle_cfg, 3)
    text, image = batch["text_tokens"], batch["image_tokens"]
    # logits that put all mass on the right targets give ~0 loss; any other alignment does not
    good = Logits(F.one_hot(text[:, 1:], dalle_cfg.text_vocab_total).float() * 50,
                  F.one_hot(image, dalle_cfg.image_vocab_size).float() * 50)
    out = dalle_loss(good, text, image, 0.5)
    assert out.text_loss < 1e-3 and out.image_loss < 1e-3
    unshifted = Logits(F.one_hot(text[:, :-1], dalle_cfg.text_vocab_total).float() * 50, good.image)
    assert dalle_loss(unshifted, text, image, 0.5).text_loss > 1.0


def test_loss_weights_isolate_each_term():
    module = make_module()
    batch = token_batch(module.config, 4)
    logits = module.model(batch["text_tokens"], batch["image_tokens"][:, :-1])
    t, i = batch["text_tokens"], batch["image_tokens"]
    text_only = dalle_loss(logits, t, i, 1.0)
    image_only = dalle_loss(logits, t, i, 0.0)
    mixed = dalle_loss(logits, t, i, 0.125)
    expect_text = F.cross_entropy(logits.text.reshape(-1, logits.text.shape[-1]), t[:, 1:].reshape(-1))
    expect_image = F.cross_entropy(logits.image.reshape(-1, logits.image.shape[-1]), i.reshape(-1))
    torch.testing.assert_close(text_only.loss, expect_text)
    torch.testing.assert_close(image_only.loss, expect_image)
    torch.testing.assert_close(mixed.loss, 0.125 * expect_text + 0.875 * expect_image)
    assert not torch.allclose(expect_text, expect_image)
    # gradients: weight 0 on the text term means the text head gets no gradient at all
    image_only.loss.backward()
    assert module.model.text_head.weight.grad.abs().max() == 0
    assert module.model.image_head.weight.grad.abs().max() > 0


def test_loss_is_fp32_under_bf16_autocast():
    module = make_module()
    batch = token_batch(module.config, 2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        logits = module.model(batch["text_tokens"], batch["image_tokens"][:, :-1])
        out = dalle_loss(logits, batch["text_tokens"], batch["image_tokens"], 0.125)
    assert logits.image.dtype == torch.bfloat16
    assert out.loss.dtype == out.text_loss.dtype == out.image_loss.dtype == torch.float32


# ---- caption dropout ---------------------------------------------------------------------
def test_caption_dropout_rows_are_kept_or_fully_null():
    dalle_cfg, _ = tiny()
    text = token_batch(dalle_cfg, 64)["text_tokens"]
    null = null_text_tokens(dalle_cfg)
    assert torch.equal(null[0], torch.arange(dalle_cfg.text_vocab_size, dalle_cfg.text_vocab_total))
    assert torch.equal(drop_captions(text, 1.0, null), null.expand(64, -1))
    assert torch.equal(drop_captions(text, 0.0, null), text)
    half = drop_captions(text, 0.5, null, torch.Generator().manual_seed(1))
    is_null = (half == null).all(1)
    is_kept = (half == text).all(1)
    assert torch.all(is_null | is_kept)
    assert 10 < int(is_null.sum()) < 54
    again = drop_captions(text, 0.5, null, torch.Generator().manual_seed(1))
    assert torch.equal(half, again)


def test_training_null_caption_is_the_samplers(tiny_tokenizer, monkeypatch):
    """Guidance dropout trains on the caption guided sampling conditions on: one definition."""
    import dalle.tokenizer

    module = make_module(caption_dropout=0.5)              # built without a tokenizer file
    assert (tiny_tokenizer.vocab_size, tiny_tokenizer.text_len) == (module.config.text_vocab_size,
                                                                    module.config.text_len)
    assert torch.equal(module.null_tokens, tiny_tokenizer.null_tokens(1))
    assert torch.equal(null_text_tokens(module.config, 5), tiny_tokenizer.null_tokens(5))
    # both go through dalle.tokenizer.null_tokens: change it and both change
    marked = lambda vocab_size, text_len, batch=1, device=None: torch.full((batch, text_len), 7)
    monkeypatch.setattr(dalle.tokenizer, "null_tokens", marked)
    assert torch.equal(null_text_tokens(module.config, 2), torch.full((2, module.config.text_len), 7))
    assert torch.equal(tiny_tokenizer.null_tokens(2), torch.full((2, tiny_tokenizer.text_len), 7))


def test_module_applies_caption_dropout_reproducibly():
    module = make_module(caption_dropout=0.5)
    seen = []
    embed = module.model._embed                         # what the model reads, whichever loss path
    module.model._embed = lambda text, image: (seen.append(text.clone()), embed(text, image))[1]
    batch = token_batch(module.config, 32)
    null = module.null_tokens
    for step in (7, 7, 8):
        module.compute_loss(batch, step=step)
    dropped = [(t == null).all(1) for t in seen]
    assert torch.equal(dropped[0], dropped[1])         # same step -> same rows
    assert not torch.equal(dropped[0], dropped[2])     # next step -> fresh coin flips
    assert 0 < int(dropped[0].sum()) < 32
    assert torch.equal(seen[0][~dropped[0]], batch["text_tokens"][~dropped[0]])


# ---- optimizer ---------------------------------------------------------------------------
def test_param_groups_decay_only_matmul_weights():
    module = make_module(weight_decay=0.1)
    model = module.model
    decay, no_decay = param_groups(model, 0.1)
    names = {id(p): n for n, p in model.named_parameters()}
    decayed = {names[id(p)] for p in decay["params"]}
    plain = {names[id(p)] for p in no_decay["params"]}
    assert decayed.isdisjoint(plain)
    assert decayed | plain == set(names.values())
    linear_weights = {f"{n}.weight" for n, m in model.named_modules() if isinstance(m, nn.Linear)}
    assert decayed == linear_weights
    assert all(not n.endswith("bias") and "ln" not in n and "emb" not in n for n in decayed)
    assert {"text_emb.weight", "image_emb.weight", "ln_f.weight"} <= plain
    opt = build_optimizer(model, module.train_config)
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]


def test_param_groups_never_decay_a_tied_embedding():
    class Tied(nn.Module):
        def __init__(self):
            super().__init__()
            self.emb = nn.Embedding(10, 4)
            self.head = nn.Linear(4, 10, bias=False)
            self.head.weight = self.emb.weight
            self.fc = nn.Linear(4, 4)

    m = Tied()
    decay, no_decay = param_groups(m, 0.1)
    assert [p is m.fc.weight for p in decay["params"]] == [True]
    assert sum(p is m.emb.weight for p in no_decay["params"]) == 1


def test_schedule_warms_up_then_decays():
    module = make_module(lr=1e-3, warmup_steps=4, max_steps=20, min_lr_ratio=0.1)
    opt = build_optimizer(module.model, module.train_config)
    sched = build_scheduler(opt, module.train_config)
    lrs = []
    for _ in range(24):
        lrs.append(opt.param_groups[0]["lr"])
        opt.step()
        sched.step()
    assert lrs[0] == pytest.approx(2.5e-4) and lrs[3] == pytest.approx(1e-3)
    assert all(a >= b for a, b in itertools.pairwise(lrs[3:]))
    assert lrs[-1] == pytest.approx(1e-4)


# ---- learning ----------------------------------------------------------------------------
def test_tiny_model_overfits_a_handful_of_captions():
    torch.manual_seed(0)
    module = make_module(caption_dropout=0.0, weight_decay=0.0, lr=1e-2, warmup_steps=10, max_steps=100)
    batch = token_batch(module.config, 4, seed=3)
    opt = build_optimizer(module.model, module.train_config)
    sched = build_scheduler(opt, module.train_config)
    losses = []
    for step in range(100):
        out = module.compute_loss(batch, step=step)
        opt.zero_grad(set_to_none=True)
        out.loss.backward()
        opt.step()
        sched.step()
        losses.append(out.loss.item())
    assert losses[-1] < 0.1 * losses[0], (losses[0], losses[-1])


# ---- Trainer: non-finite losses ----------------------------------------------------------
class BatchList(torch.utils.data.Dataset):
    def __init__(self, batches):
        self.batches = batches

    def __len__(self):
        return len(self.batches)

    def __getitem__(self, i):
        return self.batches[i]


def batch_loader(cfg, n: int, skipped=None):
    batches = [token_batch(cfg, 4, seed=i) for i in range(n)]
    for b in batches:
        b["skipped"] = dict(skipped or {})
    return torch.utils.data.DataLoader(BatchList(batches), batch_size=None)


def nan_on_steps(module: DalleModule, steps) -> None:
    """Make the model's caption logits NaN at the given global steps (whichever image-loss path)."""
    def hook(head, args, output):
        if module.global_step in steps:
            return output * float("nan")
        return output
    module.model.text_head.register_forward_hook(hook)


class Snapshots(L.Callback):
    """Parameters at the start of every step, by global step."""

    def __init__(self):
        self.params = {}

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self.params[trainer.global_step] = [p.detach().clone() for p in pl_module.model.parameters()]


def run_trainer(module, loader, tmp_path, callbacks=()):
    trainer = build_trainer(module.train_config, tmp_path, enable_progress_bar=False, logger=False,
                            accelerator="cpu", enable_model_summary=False, callbacks=callbacks)
    trainer.fit(module, loader)
    return trainer


def test_nonfinite_loss_skips_the_step_and_counts_it(tmp_path):
    module = make_module(max_steps=8, ckpt_every=100, nan_patience=3)
    nan_on_steps(module, {3, 4})
    watch = Snapshots()
    trainer = run_trainer(module, batch_loader(module.config, 8, skipped={"corrupt": 1, "too_small": 2}),
                          tmp_path, callbacks=[watch])
    snapshots = watch.params
    assert trainer.global_step == 8 and not trainer.should_stop
    assert module.nonfinite.total == 2 and module.nonfinite.streak == 0
    same = lambda a, b: all(torch.equal(x, y) for x, y in zip(a, b))
    assert same(snapshots[3], snapshots[4]) and same(snapshots[4], snapshots[5])   # NaN steps changed nothing
    assert not same(snapshots[2], snapshots[3]) and not same(snapshots[5], snapshots[6])
    assert all(torch.isfinite(p).all() for p in module.model.parameters())
    assert trainer.callback_metrics["train/nonfinite_steps"] == 2
    assert dict(module.skipped) == {"corrupt": 8, "too_small": 16}
    # logged every log_every (5) steps as running totals: the last log saw 5 batches
    assert module.train_config.log_every == 5
    assert trainer.callback_metrics["data/skipped_too_small"] == 10
    assert trainer.callback_metrics["train/tokens_per_s"] > 0


def test_persistent_nonfinite_loss_stops_with_a_checkpoint(tmp_path, caplog):
    module = make_module(max_steps=30, ckpt_every=100, nan_patience=3)
    module.hparams["out_dir"] = str(tmp_path)
    nan_on_steps(module, set(range(2, 100)))
    with caplog.at_level(logging.ERROR, logger="train.dalle_module"):
        trainer = run_trainer(module, batch_loader(module.config, 30), tmp_path)
    assert trainer.global_step == 5          # steps 2, 3, 4 non-finite, then stop
    ckpts = list((tmp_path / "checkpoints").glob("nonfinite-step*.ckpt"))
    assert len(ckpts) == 1
    assert "consecutive non-finite losses" in caplog.text
    state = torch.load(ckpts[0], map_location="cpu", weights_only=True)
    assert state["dalle_train_state"]["nonfinite_total"] == 3
    assert all(torch.isfinite(v).all() for v in state["state_dict"].values())


# ---- data paths --------------------------------------------------------------------------
def test_on_the_fly_tokenises_images_with_the_frozen_vqvae(tmp_path):
    from vqvae.model import DiscreteVAE

    preset = load_preset("tiny")
    torch.manual_seed(0)
    vq = DiscreteVAE(preset.vqvae).eval()
    vq.save(tmp_path / "vqvae")
    train_cfg = dataclasses.replace(preset.dalle_train, on_the_fly=True, caption_dropout=0.0)
    module = DalleModule(preset.dalle, train_cfg, vqvae_dir=str(tmp_path / "vqvae"))
    module.configure_model()
    seen = []
    embed = module.model._embed                         # what the model reads, whichever loss path
    module.model._embed = lambda text, image: (seen.append(image.clone()), embed(text, image))[1]
    r = preset.vqvae.resolution
    images = torch.rand(3, 3, r, r, generator=torch.Generator().manual_seed(1))
    batch = {"images": images, "text_tokens": token_batch(preset.dalle, 3)["text_tokens"],
             "captions": ["a", "b", "c"], "keys": ["0", "1", "2"], "skipped": {"corrupt": 2}}
    batch = module.on_before_batch_transfer(batch, 0)
    out = module.compute_loss(batch)
    out.loss.backward()
    assert torch.equal(seen[0], vq.encode(images).flatten(1)[:, :-1])   # the inputs: every code but the last
    assert module.skipped["corrupt"] == 2
    assert not any(k.startswith(("vqvae", "_vqvae")) for k in module.state_dict())
    assert all(p.grad is None for p in module.vqvae(images.device).parameters())
    opt_params = {id(p) for g in build_optimizer(module.model, train_cfg).param_groups for p in g["params"]}
    assert opt_params == {id(p) for p in module.model.parameters()}


def test_bad_token_batches_are_rejected_with_a_clear_error():
    module = make_module()
    batch = token_batch(module.config, 2)
    bad = dict(batch, image_tokens=batch["image_tokens"] + module.config.image_vocab_size)
    with pytest.raises(ValueError, match="image_tokens out of range"):
        module.on_before_batch_transfer(bad, 0)
    short = dict(batch, text_tokens=batch["text_tokens"][:, :3])
    with pytest.raises(ValueError, match="text_tokens must be"):
        module.on_before_batch_transfer(short, 0)
    grid = dict(batch, image_tokens=batch["image_tokens"].view(2, module.config.image_grid, -1))
    assert module.on_before_batch_transfer(grid, 0)["image_tokens"].shape == batch["image_tokens"].shape


def test_fit_dalle_on_the_fly_from_image_shards(tmp_path, image_shards, tiny_tokenizer):
    from dalle.bundle import load_bundle
    from train.dalle_fit import fit_dalle
    from vqvae.model import DiscreteVAE

    preset = load_preset("tiny", ["dalle_train.max_steps=3", "dalle_train.batch_size=4"])
    torch.manual_seed(0)
    vqvae_dir = DiscreteVAE(preset.vqvae).save(tmp_path / "vqvae")
    shards = image_shards(n=16, size=24)
    path = fit_dalle(preset, tmp_path / "run", tokenizer_path=tiny_tokenizer.path, vqvae_dir=vqvae_dir,
                     image_shards=[str(p) for p in shards], enable_progress_bar=False, accelerator="cpu")
    bundle = load_bundle(path)
    assert bundle.meta["data"] == "images" and bundle.meta["global_step"] == 3


def test_fit_dalle_without_data_is_a_clear_error(tmp_path, tiny_tokenizer):
    from train.dalle_fit import fit_dalle

    with pytest.raises(ValueError, match="no training data"):
        fit_dalle("tiny", tmp_path, tokenizer_path=tiny_tokenizer.path)
    with pytest.raises(ValueError, match="needs vqvae_dir"):
        fit_dalle(load_preset("tiny", ["dalle_train.on_the_fly=true"]), tmp_path,
                  tokenizer_path=tiny_tokenizer.path, image_shards=["x.tar"])


def test_validation_loss_splits_by_part_and_adds_up():
    """val/image_loss/<part> (signs, scenes, ...) beside the mixed loss, which is unchanged."""
    module = make_module()
    batch = token_batch(module.config, 6)
    keys = ["sign000001", "scene000002", "sign000003", "scene000004", "scene000005", "emoji000006"]
    text, image = batch["text_tokens"], batch["image_tokens"]
    with torch.no_grad():
        out, parts = module.loss_by_part(text, image, keys)
        whole = module._loss(text, image)
        signs = module._loss(text[[0, 2]], image[[0, 2]])
    assert {k: n for k, (_, n) in parts.items()} == {"sign": 2, "scene": 3, "emoji": 1}
    for f in ("loss", "text_loss", "image_loss"):
        torch.testing.assert_close(getattr(out, f), getattr(whole, f), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(parts["sign"][0].image_loss, signs.image_loss)


def test_a_run_logs_held_out_loss_per_part(tmp_path, tiny_tokenizer):
    import csv

    import numpy as np

    from train.config import load_preset
    from train.dalle_fit import fit_dalle
    from train.data.tokens import TokenShardWriter

    preset = load_preset("tiny", ["dalle_train.max_steps=2", "dalle_train.val_every=2", "dalle_train.image_every=0",
                                  "dalle_train.batch_size=4"])
    g = preset.dalle.image_grid
    rng = np.random.default_rng(0)
    shards = {}
    for name, n in (("train", 8), ("val", 6)):
        with TokenShardWriter(tmp_path / name, max_samples=n) as writer:
            for i in range(n):
                part = "sign" if i % 3 == 0 else "scene"
                writer.write_tokens(f"{part}{i:06d}", rng.integers(0, preset.dalle.image_vocab_size, (g, g)),
                                    "a red cube")
        shards[name] = [str(p) for p in writer.paths]
    fit_dalle(preset, tmp_path / "run", tokenizer_path=tiny_tokenizer.path, token_shards=shards["train"],
              val_token_shards=shards["val"], enable_progress_bar=False, accelerator="cpu")
    rows = list(csv.DictReader((tmp_path / "run" / "logs" / "metrics.csv").open()))
    val = [r for r in rows if r.get("val/image_loss")]
    assert val, "no validation row"
    v = val[-1]
    mixed = (2 * float(v["val/image_loss/sign"]) + 4 * float(v["val/image_loss/scene"])) / 6
    assert abs(mixed - float(v["val/image_loss"])) < 1e-4
