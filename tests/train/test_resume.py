"""A killed transformer run resumes from its last checkpoint and continues exactly."""
from __future__ import annotations

import dataclasses

import lightning as L
import pytest
import torch

from train.config import load_preset
from train.dalle_module import DalleModule, null_text_tokens
from train.trainer import build_trainer, latest_checkpoint

STEPS_PER_EPOCH = 5



class Killed(RuntimeError):
    pass


class Recorder(L.Callback):
    """Loss of every optimizer step by global step; raises :class:`Killed` after ``kill_at`` steps."""

    def __init__(self, kill_at: int | None = None):
        self.kill_at = kill_at
        self.losses: dict[int, float] = {}
        self._step = 0

    def on_train_batch_start(self, trainer, pl_module, batch, batch_idx):
        self._step = trainer.global_step

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.losses[self._step] = float(outputs["loss"])
        if self.kill_at is not None and trainer.global_step >= self.kill_at:
            raise Killed(f"killed after step {trainer.global_step}")


class Batches(torch.utils.data.Dataset):
    """A fixed, ordered list of token batches: the data order is the same in every run."""

    def __init__(self, cfg, n: int):
        g = torch.Generator().manual_seed(0)
        self.items = []
        for _ in range(n):
            text = null_text_tokens(cfg, 4)
            text[:, :3] = torch.randint(0, cfg.text_vocab_size, (4, 3), generator=g)
            image = torch.randint(0, cfg.image_vocab_size, (4, cfg.image_len), generator=g)
            self.items.append({"text_tokens": text, "image_tokens": image, "skipped": {}})

    def __len__(self):
        return len(self.items)

    def __getitem__(self, i):
        return self.items[i]


def run(tmp_path, *, kill_at=None, ckpt=None, sha="a" * 64, max_steps=12, val_every=0, callbacks=()):
    preset = load_preset("tiny")
    cfg = dataclasses.replace(preset.dalle_train, max_steps=max_steps, ckpt_every=STEPS_PER_EPOCH,
                              caption_dropout=0.3, warmup_steps=3, lr=3e-3, weight_decay=0.01, val_every=val_every)
    L.seed_everything(cfg.seed, verbose=False)
    module = DalleModule(preset.dalle, cfg, tokenizer_sha256=sha, out_dir=str(tmp_path))
    rec = Recorder(kill_at)
    trainer = build_trainer(cfg, tmp_path, callbacks=[rec, *callbacks], enable_progress_bar=False, logger=False,
                            accelerator="cpu", enable_model_summary=False)
    loader = torch.utils.data.DataLoader(Batches(preset.dalle, STEPS_PER_EPOCH), batch_size=None)
    val = torch.utils.data.DataLoader(Batches(preset.dalle, 2), batch_size=None) if val_every else None
    trainer.fit(module, loader, val, ckpt_path=ckpt)
    return trainer, rec, module


def test_killed_run_resumes_at_the_same_step_with_the_same_losses(tmp_path):
    _, full, _ = run(tmp_path / "full")
    assert sorted(full.losses) == list(range(12))

    with pytest.raises(Killed):
        run(tmp_path / "killed", kill_at=8)
    ckpt = latest_checkpoint(tmp_path / "killed")
    assert ckpt is not None
    trainer, resumed, _ = run(tmp_path / "killed", ckpt=ckpt)
    assert min(resumed.losses) == STEPS_PER_EPOCH       # picked up at the checkpointed step
    assert trainer.global_step == 12
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(full.losses[step], rel=1e-5, abs=1e-6), step
    # the losses did move: equality above is not a constant
    assert len({round(v, 4) for v in full.losses.values()}) > 6


class Events(L.Callback):
    """The order of validations and checkpoint saves, with the step of each."""

    def __init__(self):
        self.events: list[tuple[str, int]] = []

    def on_validation_end(self, trainer, pl_module):
        self.events.append(("val", trainer.global_step))

    def on_save_checkpoint(self, trainer, pl_module, checkpoint):
        self.events.append(("ckpt", trainer.global_step))


def test_a_checkpoint_at_a_validation_step_comes_after_the_validation(tmp_path):
    """A run killed right after such a checkpoint has logged that step's held-out loss already."""
    ev = Events()
    run(tmp_path, max_steps=2 * STEPS_PER_EPOCH, val_every=STEPS_PER_EPOCH, callbacks=[ev])
    for step in (STEPS_PER_EPOCH, 2 * STEPS_PER_EPOCH):          # the last step too
        at = [e for e in ev.events if e[1] == step]
        assert ("val", step) in at and ("ckpt", step) in at, ev.events
        assert at.index(("val", step)) < at.index(("ckpt", step)), ev.events


def test_a_run_resumed_from_a_checkpoint_saved_after_validation_continues_exactly(tmp_path):
    _, full, _ = run(tmp_path / "full", val_every=STEPS_PER_EPOCH)
    with pytest.raises(Killed):
        run(tmp_path / "killed", kill_at=8, val_every=STEPS_PER_EPOCH)
    ckpt = latest_checkpoint(tmp_path / "killed")
    trainer, resumed, _ = run(tmp_path / "killed", ckpt=ckpt, val_every=STEPS_PER_EPOCH)
    assert min(resumed.losses) == STEPS_PER_EPOCH and trainer.global_step == 12
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(full.losses[step], rel=1e-5, abs=1e-6), step


def test_resume_with_another_tokenizer_is_refused(tmp_path):
    run(tmp_path, max_steps=STEPS_PER_EPOCH)
    ckpt = latest_checkpoint(tmp_path)
    assert torch.load(ckpt, map_location="cpu", weights_only=True)["tokenizer_sha256"] == "a" * 64
    with pytest.raises(ValueError, match="tokenizer sha256"):
        run(tmp_path, ckpt=ckpt, sha="b" * 64)


# ---- end to end through fit_dalle --------------------------------------------------------
def write_token_shards(out_dir, preset, *, n_shards: int, per_shard: int, seed: int = 0,
                       caption=None) -> list[str]:
    """Token shards of random codes with captions like the tokenizer fixture's (or ``caption(rng)``);
    keys "{shard}-{i}"."""
    import random

    import numpy as np
    from tests.helpers import random_caption

    from train.data.tokens import TokenShardWriter

    rng = np.random.default_rng(seed)
    cap_rng = random.Random(seed)
    g = preset.dalle.image_grid
    with TokenShardWriter(out_dir, max_samples=per_shard) as writer:
        for s in range(n_shards):
            for i in range(per_shard):
                codes = rng.integers(0, preset.dalle.image_vocab_size, (g, g))
                writer.write_tokens(f"s{s}-{i:03d}", codes, (caption or random_caption)(cap_rng))
    return [str(p) for p in writer.paths]


@pytest.fixture
def vqvae_dir(tmp_path, tiny_preset):
    from vqvae.model import DiscreteVAE

    torch.manual_seed(0)
    return DiscreteVAE(tiny_preset.vqvae).save(tmp_path / "vqvae")


def test_fit_dalle_writes_a_bundle_and_resumes_by_itself(tmp_path, tiny_preset, tiny_tokenizer, vqvae_dir):
    from dalle.bundle import load_bundle
    from train.dalle_fit import fit_dalle

    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=2, per_shard=16)

    def preset_with(max_steps):
        return load_preset("tiny", [f"dalle_train.max_steps={max_steps}", "dalle_train.ckpt_every=4"])

    out = tmp_path / "run"
    first = Recorder()
    path = fit_dalle(preset_with(6), out, tokenizer_path=tiny_tokenizer.path, vqvae_dir=vqvae_dir,
                     token_shards=shards, callbacks=[first], enable_progress_bar=False, accelerator="cpu")
    assert sorted(first.losses) == list(range(6))
    bundle = load_bundle(path)
    assert bundle.meta["global_step"] == 6 and bundle.tokenizer.sha256 == tiny_tokenizer.sha256
    ckpt = torch.load(latest_checkpoint(out), map_location="cpu", weights_only=True)
    assert ckpt["global_step"] == 6                     # the final steps are saved, not only every 4
    for k, v in bundle.model.state_dict().items():
        torch.testing.assert_close(v, ckpt["state_dict"][f"model.{k}"])

    second = Recorder()
    fit_dalle(preset_with(9), out, tokenizer_path=tiny_tokenizer.path, vqvae_dir=vqvae_dir, token_shards=shards,
              callbacks=[second], enable_progress_bar=False, accelerator="cpu")
    assert sorted(second.losses) == [6, 7, 8]           # resumed at step 6 without being told
    assert load_bundle(path).meta["global_step"] == 9

    from train.text_tokenizer import train_tokenizer

    other = train_tokenizer(["a completely different corpus of words"] * 20, tiny_preset.dalle.text_vocab_size,
                            tmp_path / "other_tokenizer.json")
    with pytest.raises(ValueError, match="tokenizer sha256"):
        fit_dalle(preset_with(12), out, tokenizer_path=other, vqvae_dir=vqvae_dir, token_shards=shards,
                  enable_progress_bar=False, accelerator="cpu")


class StartWeights(L.Callback):
    def on_train_start(self, trainer, pl_module):
        self.state = {k: v.detach().clone() for k, v in pl_module.model.state_dict().items()}


def test_init_from_a_bundle_starts_a_new_run_from_its_weights(tmp_path, tiny_preset, tiny_tokenizer, vqvae_dir):
    """Issue 11: ``dalle train --init-from BUNDLE`` (fine-tuning, or the run directory is gone)."""
    from dalle.bundle import load_bundle
    from train.dalle_fit import fit_dalle

    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=2, per_shard=16)
    preset = load_preset("tiny", ["dalle_train.max_steps=3", "dalle_train.ckpt_every=3"])
    kw = dict(tokenizer_path=tiny_tokenizer.path, vqvae_dir=vqvae_dir, token_shards=shards,
              enable_progress_bar=False, accelerator="cpu")
    bundle = fit_dalle(preset, tmp_path / "first", **kw)
    start = StartWeights()
    fit_dalle(preset, tmp_path / "second", init_from=bundle, callbacks=[start], **kw)
    trained = load_bundle(bundle).model.state_dict()
    assert set(start.state) == set(trained)
    for k, v in trained.items():
        torch.testing.assert_close(start.state[k], v)                  # started from the bundle ...
    fresh = StartWeights()
    fit_dalle(preset, tmp_path / "third", callbacks=[fresh], **kw)
    assert any(not torch.equal(fresh.state[k], v) for k, v in trained.items())   # ... not from a new init
    second = torch.load(latest_checkpoint(tmp_path / "second"), map_location="cpu", weights_only=True)
    assert second["global_step"] == 3                                  # a new run: its own step count

    # a run checkpoint (the older format too) works as a start point; another tokenizer does not
    fit_dalle(preset, tmp_path / "fourth", init_from=latest_checkpoint(tmp_path / "first"), **kw)
    from train.text_tokenizer import train_tokenizer
    other = train_tokenizer(["a completely different corpus of words"] * 20, tiny_preset.dalle.text_vocab_size,
                            tmp_path / "other_tokenizer.json")
    with pytest.raises(ValueError, match="tokenizer"):
        fit_dalle(preset, tmp_path / "fifth", init_from=bundle, **{**kw, "tokenizer_path": other})


def test_init_from_may_turn_on_within_word_positions_and_nothing_else(tmp_path, tiny_preset, tiny_tokenizer,
                                                                       vqvae_dir):
    """A shipped model given ``dalle.spell_pos`` starts from its weights with the new tables at zero."""
    from dalle.bundle import load_bundle
    from train.dalle_fit import fit_dalle

    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=1, per_shard=16,
                                caption=lambda rng: f'a "{rng.choice(["AB", "XYZ", "Q"])}"')
    kw = dict(tokenizer_path=tiny_tokenizer.path, vqvae_dir=vqvae_dir, token_shards=shards,
              enable_progress_bar=False, accelerator="cpu")
    steps = ["dalle_train.max_steps=2", "dalle_train.ckpt_every=2", "dalle_train.image_every=0"]
    bundle = fit_dalle(load_preset("tiny", steps), tmp_path / "plain", **kw)
    start = StartWeights()
    spelled = fit_dalle(load_preset("tiny", [*steps, "dalle.spell_pos=6"]), tmp_path / "spell", init_from=bundle,
                        callbacks=[start], **kw)
    for k, v in load_bundle(bundle).model.state_dict().items():
        torch.testing.assert_close(start.state[k], v)
    assert all(not start.state[k].any() for k in start.state if k.startswith("spell_"))
    model = load_bundle(spelled).model                                  # the ids come from the tokenizer
    assert (model.config.spell_pos, model.config.spell_open_id, model.config.spell_close_id) == (
        6, tiny_tokenizer.spell_open, tiny_tokenizer.spell_close)
    assert model.spell_start.weight.any()                               # and the tables were trained
    with pytest.raises(ValueError, match="config differs"):
        fit_dalle(load_preset("tiny", [*steps, "dalle.spell_pos=6", "dalle.n_layer=1"]), tmp_path / "other",
                  init_from=bundle, **kw)
    from train.text_tokenizer import train_tokenizer
    plain_tok = train_tokenizer(["a red square", "two blue circles"] * 20, tiny_preset.dalle.text_vocab_size,
                                tmp_path / "plain_tokenizer.json", spell=False)
    with pytest.raises(ValueError, match="tokenizer that spells"):
        fit_dalle(load_preset("tiny", [*steps, "dalle.spell_pos=6"]), tmp_path / "nospell",
                  **{**kw, "tokenizer_path": plain_tok})


@pytest.mark.parametrize("workers", [0, 2])
def test_fit_dalle_killed_mid_epoch_resumes_with_the_same_batches(tmp_path, tiny_preset, tiny_tokenizer, workers):
    """Issue 13 item 3: the resumed run saw step 0's batch again; now it matches step for step."""
    from train.dalle_fit import fit_dalle

    shards = write_token_shards(tmp_path / "tokens", tiny_preset, n_shards=3, per_shard=14)
    preset = load_preset("tiny", ["dalle_train.max_steps=10", "dalle_train.ckpt_every=3",
                                  "dalle_train.caption_dropout=0.3", f"data.num_workers={workers}"])
    kw = dict(tokenizer_path=tiny_tokenizer.path, token_shards=shards, enable_progress_bar=False,
              accelerator="cpu", enable_model_summary=False)
    full = Recorder()
    fit_dalle(preset, tmp_path / "full", callbacks=[full], **kw)
    with pytest.raises(Killed):
        fit_dalle(preset, tmp_path / "killed", callbacks=[Recorder(kill_at=5)], **kw)   # ckpt at 3, mid-epoch
    resumed = Recorder()
    fit_dalle(preset, tmp_path / "killed", callbacks=[resumed], **kw)
    assert sorted(resumed.losses) == list(range(3, 10))
    for step, loss in resumed.losses.items():
        assert loss == pytest.approx(full.losses[step], rel=1e-6, abs=1e-7), step


def test_both_text_conditioned_stages_refuse_another_tokenizer_or_config():
    from train.scorer_module import ScorerModule
    preset = load_preset("tiny")
    sha = "a" * 64
    for module, what in ((DalleModule(preset.dalle, preset.dalle_train, tokenizer_sha256=sha), "dalle"),
                         (ScorerModule(preset.scorer, preset.scorer_train, tokenizer_sha256=sha), "scorer")):
        own = {"tokenizer_sha256": sha, "hyper_parameters": {f"{what}_config": module.config.to_dict()}}
        module.on_load_checkpoint(dict(own))
        with pytest.raises(ValueError, match="tokenizer sha256 bbbbbbbbbbbb, but this run's tokenizer is aaaa"):
            module.on_load_checkpoint({**own, "tokenizer_sha256": "b" * 64})
        other = {**module.config.to_dict(), "n_layer": module.config.n_layer + 1}
        with pytest.raises(ValueError, match=f"different {what} config; resume with the preset"):
            module.on_load_checkpoint({**own, "hyper_parameters": {f"{what}_config": other}})
