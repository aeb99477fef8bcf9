"""Training the image-caption scorer on real tiny shards: the loss goes down, bad samples are skipped and
counted, runs resume, a checkpoint of another tokenizer is refused, the export is safetensors + JSON."""
import math
import json
import random

import lightning as L
import numpy as np
import pytest
import torch

from dalle.scorer import ImageTextScorer
from dalle.tokenizer import TextTokenizer
from synth.scenes import build_scenes
from synth.signs import build_signs
from tests.helpers import random_caption
from train.config import load_preset
from common.scorer_batches import MAX_CHARS, NEG_SLOTS
from train.data.scorer_data import scorer_dataset
from train.data.shards import ShardWriter
from train.scorer_fit import fit_scorer
from train.scorer_module import contrastive_loss
from train.text_tokenizer import train_tokenizer

QUIET = dict(enable_progress_bar=False, trainer_kwargs={"enable_model_summary": False})
LONG = ["dalle.text_len=32"]    # tiny captions of 8 ids would cut off most of what the negatives change


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    d = tmp_path_factory.mktemp("scorer_data")
    scenes = build_scenes(d / "scenes", 32, resolution=16, shard_size=32, seed=1)
    signs = build_signs(d / "signs", 32, resolution=16, shard_size=32, seed=1)
    with ShardWriter(d / "bad", max_samples=10) as w:        # one undecodable image among real ones
        w.write_sample("bad000000000", image=b"\x89PNG not really", image_ext="png", caption="a red circle")
    preset = load_preset("tiny", LONG)
    from train.text_tokenizer import captions_from_shards
    tok = train_tokenizer(captions_from_shards([d / "scenes", d / "signs"], preset.data), 128, d / "tok.json")
    other = train_tokenizer([random_caption(random.Random(0)) for _ in range(50)], 128, d / "other.json")
    return d, [str(d / "scenes"), str(d / "signs"), str(d / "bad")], tok, other


def _batch(d, tokenizer, preset, n=32):
    stream = scorer_dataset([d / "scenes", d / "signs"], preset.data, tokenizer=tokenizer, batch_size=n,
                            train=False, seed=0)
    batch = next(iter(stream))
    batch["images"] = batch["images"].float() / 255
    return batch


def test_batches_carry_hard_negatives_and_auxiliary_targets(data):
    d, _, tok, _ = data
    preset = load_preset("tiny", LONG)
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    stream = scorer_dataset([d / "scenes"], preset.data, tokenizer=tokenizer, batch_size=8, train=False,
                            aux_grid=2)
    b = next(iter(stream))
    assert b["neg_tokens"].shape == (8, NEG_SLOTS, preset.dalle.text_len) and b["neg_mask"].any()
    assert not (b["neg_tokens"] == b["text_tokens"][:, None]).all(-1)[b["neg_mask"]].any()   # all real negatives
    assert b["aux_cells"].shape == (8, 4) and int(b["aux_cells"].min()) >= 0      # scenes: every cell labelled
    assert b["aux_chars"].shape == (8, MAX_CHARS) and bool((b["aux_chars"] == -1).all())   # no sign here
    counts = b["aux_counts"].sum(1)                               # every object of a scene counted once
    assert b["aux_counts"].shape == (8, 18) and bool(((counts >= 1) & (counts <= 4)).all())
    assert b["aux_relation"].shape == (8, 4) and bool(((b["aux_relation"][:, 0] >= 0) & (b["aux_relation"][:, 0] <= 4)).all())
    signs = next(iter(scorer_dataset([d / "signs"], preset.data, tokenizer=tokenizer, batch_size=8, train=False,
                                     aux_grid=2)))
    assert bool((signs["aux_chars"][:, 0] < 26).all()) and bool((signs["aux_counts"] == -1).all())


def test_the_evaluation_reads_the_batches_of_the_validation_stream(data):
    """evaluation/ reads shards without training code, and sees what the scorer's validation sees:
    the same samples in the same order, the same hard negatives, the bad sample skipped."""
    from evaluation.scorer_eval import shard_batches
    d, shards, tok, _ = data
    preset = load_preset("tiny", LONG)
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    sources = [shards[2], shards[0], shards[1]]                 # the bad shard first
    stream = scorer_dataset(sources, preset.data, tokenizer=tokenizer, batch_size=24, train=False, seed=3)
    ours = list(shard_batches(tokenizer, sources, resolution=preset.data.resolution, batch_size=24, seed=3))
    theirs = list(stream)
    assert [len(b["keys"]) for b in ours] == [len(b["keys"]) for b in theirs] == [24, 24, 16]
    for a, b in zip(ours, theirs):
        assert a["keys"] == b["keys"] and a["neg_kinds"] == b["neg_kinds"] and bool(a["neg_mask"].any())
        for name in ("images", "text_tokens", "neg_tokens", "neg_mask"):
            assert torch.equal(a[name], b[name]), name
    with pytest.raises(ValueError, match="no usable sample"):
        list(shard_batches(tokenizer, shards[2], resolution=preset.data.resolution, batch_size=4))


def test_loss_decreases_bad_samples_are_counted_and_the_export_loads(data, tmp_path):
    d, shards, tok, _ = data
    preset = load_preset("tiny", LONG + ["scorer_train.max_steps=60", "scorer_train.ckpt_every=60"])
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    batch = _batch(d, tokenizer, preset)
    L.seed_everything(0, verbose=False)
    before = ImageTextScorer(preset.scorer)
    out = fit_scorer(preset, tmp_path / "run", train_shards=shards, tokenizer_path=tok, **QUIET)
    after = ImageTextScorer.from_checkpoint(out)
    with torch.no_grad():
        args = (batch["images"], batch["text_tokens"], batch["neg_tokens"], batch["neg_mask"])
        loss0, loss1 = contrastive_loss(before, *args).loss, contrastive_loss(after, *args).loss
    assert float(loss1) < 0.8 * float(loss0)
    info = json.loads((out / "scorer.json").read_text())
    assert info["tokenizer_sha256"] == tokenizer.sha256 and info["meta"]["global_step"] == 60
    assert info["meta"]["skipped"].get("corrupt_image", 0) >= 1
    assert sorted(p.name for p in out.iterdir()) == ["scorer.json", "scorer.safetensors", "tokenizer.json"]


def test_a_run_resumes_and_refuses_another_tokenizer(data, tmp_path):
    d, shards, tok, other = data
    run = tmp_path / "run"
    fit_scorer(load_preset("tiny", LONG + ["scorer_train.max_steps=10"]), run, train_shards=shards, tokenizer_path=tok,
               **QUIET)
    out = fit_scorer(load_preset("tiny", LONG + ["scorer_train.max_steps=20"]), run, train_shards=shards,
                     tokenizer_path=tok, **QUIET)
    meta = json.loads((out / "scorer.json").read_text())["meta"]
    assert meta["global_step"] == 20 and meta["resumed_from"] is not None
    with pytest.raises(ValueError, match="tokenizer"):
        fit_scorer(load_preset("tiny", LONG + ["scorer_train.max_steps=30"]), run, train_shards=shards,
                   tokenizer_path=other, **QUIET)


def test_a_fresh_run_starts_from_an_exported_scorer_and_refuses_a_mismatched_one(data, tmp_path):
    from train.scorer_fit import init_weights
    d, shards, tok, other = data
    preset = load_preset("tiny", LONG + ["scorer_train.max_steps=10"])
    first = fit_scorer(preset, tmp_path / "a", train_shards=shards, tokenizer_path=tok, **QUIET)
    start = ImageTextScorer.from_checkpoint(first)
    tuned_preset = load_preset("tiny", LONG + ["scorer_train.max_steps=1", "scorer_train.lr=1.0e-12",
                                               "scorer_train.warmup_steps=0",
                                               "scorer_train.aux_heads=[cells,text_chars,text_relation]",
                                               "scorer_train.aux_factored=true", "scorer_train.image_negatives=1"])
    tuned = fit_scorer(tuned_preset, tmp_path / "b", train_shards=shards, tokenizer_path=tok, init_from=first,
                       **QUIET)
    after = ImageTextScorer.from_checkpoint(tuned)
    for name, value in start.state_dict().items():    # one step at lr 1e-12: the weights it started from
        assert torch.allclose(value, after.state_dict()[name], atol=1e-6), name
    tuned_meta = json.loads((tuned / "scorer.json").read_text())["meta"]
    assert tuned_meta["init_from"] == str(first) and tuned_meta["image_negatives"] == 1
    fresh = fit_scorer(tuned_preset, tmp_path / "c", train_shards=shards, tokenizer_path=tok, **QUIET)
    assert not torch.allclose(ImageTextScorer.from_checkpoint(fresh).image_encoder.proj[0].weight,
                              after.image_encoder.proj[0].weight)   # without init_from: its own random start
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    with pytest.raises(ValueError, match="tokenizer sha256"):
        init_weights(first, preset.scorer, TextTokenizer(other, preset.dalle.text_len,
                                                         preset.dalle.text_vocab_size).sha256)
    wider = load_preset("tiny", LONG + ["scorer.embed_dim=24"]).scorer
    with pytest.raises(ValueError, match="embed_dim"):
        init_weights(first, wider, tokenizer.sha256)
    with pytest.raises(ValueError, match="--init-from"):
        init_weights(tmp_path, preset.scorer, tokenizer.sha256)


def test_scores_of_a_trained_scorer_prefer_the_true_caption_on_its_training_data(data, tmp_path):
    """Not a benchmark: after training on 64 samples the true caption beats the hard negatives on most
    of them (a scorer that learned nothing sits near 1 / (1 + negatives))."""
    d, shards, tok, _ = data
    preset = load_preset("tiny", LONG + ["scorer_train.max_steps=80", "scorer_train.ckpt_every=80"])
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    out = fit_scorer(preset, tmp_path / "run", train_shards=shards[:2], tokenizer_path=tok, **QUIET)
    from evaluation.scorer_eval import hard_negative_accuracy
    scorer = ImageTextScorer.from_checkpoint(out)
    acc = np.mean([hard_negative_accuracy(scorer, tokenizer, s, max_images=32)["accuracy"] for s in shards[:2]])
    assert acc > 0.5


def test_auxiliary_heads_are_chosen_by_name_and_train_both_towers(data):
    from train.config import ScorerTrainConfig
    from train.scorer_module import ScorerModule
    with pytest.raises(ValueError, match="aux_heads"):
        ScorerTrainConfig(aux_heads=["cells", "nope"])
    d, _, tok, _ = data
    preset = load_preset("tiny", LONG)
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    stream = scorer_dataset([d / "scenes", d / "signs"], preset.data, tokenizer=tokenizer, batch_size=64,
                            train=False, aux_grid=preset.scorer.pool_grid)
    batch = next(iter(stream))
    batch["images"] = batch["images"].float() / 255
    only_text = ScorerModule(preset.scorer, ScorerTrainConfig(aux_heads=["text_counts", "text_relation"]))
    out = only_text.compute_loss(batch)
    assert out.aux_loss is not None and torch.isfinite(out.aux_loss) and float(out.aux_loss) > 0
    out.aux_loss.backward()
    text_grad = only_text.model.text_encoder.tok_emb.weight.grad
    assert text_grad is not None and float(text_grad.abs().sum()) > 0
    assert only_text.model.image_encoder.proj[0].weight.grad is None      # text heads never touch the image tower
    none = ScorerModule(preset.scorer, ScorerTrainConfig(aux_weight=0.0))
    assert none.aux_grid is None and none.compute_loss(batch).aux_loss is None


def _scene_batch(data) -> tuple:
    """The tiny preset and one batch of 32 scenes with auxiliary targets, images as floats."""
    d, _, tok, _ = data
    preset = load_preset("tiny", LONG)
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    batch = next(iter(scorer_dataset([d / "scenes"], preset.data, tokenizer=tokenizer, batch_size=32, train=False,
                                     aux_grid=preset.scorer.pool_grid)))
    batch["images"] = batch["images"].float() / 255
    return preset, batch


def test_the_layout_target_is_one_for_both_phrasings_and_trains_both_towers(data):
    """ "A right of B" and "B left of A" are one layout (B first, A second) and "A left of B" another; the
    layout heads read only scenes that state a relation, and reach the tower they are attached to."""
    from common.scorer_batches import N_CELL_CLASSES, aux_targets
    from train.config import ScorerTrainConfig
    from train.scorer_module import ScorerModule
    red, blue = {"color": "red", "shape": "square"}, {"color": "blue", "shape": "circle"}
    objects = [{**red, "d": 0.2, "cx": 0.7, "cy": 0.5}, {**blue, "d": 0.2, "cx": 0.3, "cy": 0.5}]

    def target(subject, rel, obj):
        truth = {"kind": "scene", "objects": objects,
                 "claims": {"relation": {"subject": subject, "relation": rel, "object": obj}}}
        return aux_targets(truth, 2)[3].tolist()

    a_right_of_b, b_left_of_a = target(red, "right", blue), target(blue, "left", red)
    assert a_right_of_b[2:] == b_left_of_a[2:] and a_right_of_b[2] != a_right_of_b[3]
    assert target(red, "left", blue)[2:] == a_right_of_b[2:][::-1]
    assert target(red, "above", blue)[2:] == target(blue, "below", red)[2:]
    none = aux_targets({"kind": "scene", "objects": objects, "claims": {"relation": None}}, 2)[3].tolist()
    assert none == [0] + [N_CELL_CLASSES - 1] * 3

    preset, batch = _scene_batch(data)
    assert bool((batch["aux_relation"][:, 0] > 0).any())
    for head, tower in (("layout", "image_encoder"), ("text_layout", "text_encoder")):
        module = ScorerModule(preset.scorer, ScorerTrainConfig(aux_heads=[head]))
        module.compute_loss(batch).aux_loss.backward()
        grads = [p.grad for p in getattr(module.model, tower).parameters()]
        assert any(g is not None and float(g.abs().sum()) > 0 for g in grads), head
    unstated = {**batch, "aux_relation": batch["aux_relation"].clone()}
    unstated["aux_relation"][:, 0] = 0                    # no relation stated anywhere: nothing to learn
    module = ScorerModule(preset.scorer, ScorerTrainConfig(aux_heads=["text_layout"]))
    assert float(module.compute_loss(unstated).aux_loss) == 0.0


def test_factored_targets_split_each_pair_into_a_colour_and_a_shape(data):
    """With aux_factored the colour-shape heads classify colour and shape apart: a pair no training
    image has is no class of its own, and the loss is the two cross-entropies of the pair head's split."""
    from common.scorer_batches import N_CELL_CLASSES, N_RELATION_CLASSES
    from synth.scenes import COLORS, SHAPES
    from train.config import ScorerTrainConfig
    from train.scorer_module import ScorerModule, split_pair_classes
    blue_circle = list(COLORS).index("blue") * len(SHAPES) + SHAPES.index("circle")
    colour, shape = split_pair_classes(torch.tensor([blue_circle, N_CELL_CLASSES - 1, -1]))
    assert colour.tolist() == [list(COLORS).index("blue"), len(COLORS), -1]
    assert shape.tolist() == [SHAPES.index("circle"), len(SHAPES), -1]
    every = torch.arange(N_CELL_CLASSES - 1)
    assert len(set(zip(*map(torch.Tensor.tolist, split_pair_classes(every))))) == N_CELL_CLASSES - 1   # one-to-one

    preset, batch = _scene_batch(data)
    heads = ["cells", "layout", "text_relation", "text_layout"]
    joint = ScorerModule(preset.scorer, ScorerTrainConfig(aux_heads=["cells"]))
    module = ScorerModule(preset.scorer, ScorerTrainConfig(aux_heads=heads, aux_factored=True))
    assert joint.aux_heads["cells"].out_channels == N_CELL_CLASSES
    assert module.aux_heads["cells"].out_channels == len(COLORS) + len(SHAPES) + 2
    with torch.no_grad():                    # the other heads answer uniformly: each of their terms is log(classes)
        for name in heads[1:]:
            for p in module.aux_heads[name].parameters():
                p.zero_()
    F = torch.nn.functional
    n = len(COLORS) + 1
    logits = module.aux_heads["cells"](module.model.image_encoder.grid(batch["images"])).flatten(2).transpose(1, 2)
    c, s = split_pair_classes(batch["aux_cells"])
    cells = (F.cross_entropy(logits[..., :n].reshape(-1, n), c.reshape(-1), ignore_index=-1)
             + F.cross_entropy(logits[..., n:].reshape(-1, len(SHAPES) + 1), s.reshape(-1), ignore_index=-1))
    pair = math.log(len(COLORS) + 1) + math.log(len(SHAPES) + 1)
    assert bool((batch["aux_relation"][:, 0] > 0).any())   # some scenes state a relation: both layouts speak
    expected = cells + math.log(N_RELATION_CLASSES) + pair + 2 * pair   # relation, subject; two layouts
    out = module.compute_loss(batch)
    assert out.aux_loss is not None and float(out.aux_loss) == pytest.approx(float(expected), rel=1e-4)
    out.aux_loss.backward()                                # the cells terms reach the image tower's stages
    assert any(p.grad is not None and float(p.grad.abs().sum()) > 0 for p in module.model.image_encoder.parameters())


def test_image_negatives_reach_the_batch_and_a_caption_to_image_loss(data):
    """Image negatives are renders of the truth with one stated fact false, batched beside the true image;
    the loss picks the true image for each caption (log(1 + J) when the negatives equal the true image)."""
    from train.config import ScorerTrainConfig
    from train.scorer_module import ScorerModule
    d, _, tok, _ = data
    preset = load_preset("tiny", LONG)
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    R = preset.scorer.resolution
    batch = next(iter(scorer_dataset([d / "scenes", d / "signs"], preset.data, tokenizer=tokenizer, batch_size=16,
                                     train=False, image_negatives=2)))
    negs, mask = batch["neg_images"], batch["neg_image_mask"]
    assert negs.shape == (16, 2, 3, R, R) and negs.dtype == torch.uint8 and bool(mask.all())
    from synth.negatives import IMAGE_SCENE_KINDS, IMAGE_SIGN_KINDS
    assert all(k in IMAGE_SCENE_KINDS + IMAGE_SIGN_KINDS for row in batch["neg_image_kinds"] for k in row)
    true = batch["images"]
    batch["images"] = true.float() / 255
    assert all(int((negs[i, j] != true[i]).any(0).sum()) > 0 for i, j in mask.nonzero().tolist())
    plain = next(iter(scorer_dataset([d / "scenes"], preset.data, tokenizer=tokenizer, batch_size=4, train=False)))
    assert "neg_images" not in plain

    module = ScorerModule(preset.scorer, ScorerTrainConfig(aux_weight=0.0, image_negatives=2))
    out = module.compute_loss(batch)
    assert out.image_loss is not None and float(out.image_loss) > 0
    out.image_loss.backward()
    assert float(module.model.image_encoder.proj[0].weight.grad.abs().sum()) > 0
    same = {**batch, "neg_images": true[:, None].repeat(1, 2, 1, 1, 1)}
    assert float(module.compute_loss(same).image_loss) == pytest.approx(math.log(3), abs=1e-3)
    off = ScorerModule(preset.scorer, ScorerTrainConfig(aux_weight=0.0, image_negative_weight=0.0))
    plain["images"] = plain["images"].float() / 255
    assert off.compute_loss(batch).image_loss is None and module.compute_loss(plain).image_loss is None


def test_a_nonfinite_scorer_step_is_dropped_on_every_rank_as_the_transformer_s():
    """The scorer and the transformer share one guard: the step is dropped when any rank's loss is
    not finite, accumulated gradients are cleared (the optimizer step changes nothing), the run goes on."""
    from types import SimpleNamespace

    from train.config import ScorerTrainConfig
    from train.optim import NonFiniteSteps
    from train.scorer_module import ScorerModule
    preset = load_preset("tiny", LONG)
    module = ScorerModule(preset.scorer, ScorerTrainConfig(aux_weight=0.0))
    assert isinstance(module.nonfinite, NonFiniteSteps)
    opt = torch.optim.SGD(module.parameters(), lr=1.0)
    for p in module.parameters():
        p.grad = torch.ones_like(p)                        # gradients of earlier micro-batches
    votes = []

    def all_finite(finite, all):                           # another rank saw a NaN on the second step
        votes.append(finite)
        return finite and len(votes) != 2
    trainer = SimpleNamespace(strategy=SimpleNamespace(reduce_boolean_decision=all_finite), optimizers=[opt])
    guard = module.nonfinite
    assert guard.finite(trainer, torch.tensor(1.0)) and guard.total == 0
    assert all(p.grad is not None for p in module.parameters())
    assert not guard.finite(trainer, torch.tensor(1.0))    # finite here, not everywhere: dropped
    assert all(p.grad is None for p in module.parameters()) and (guard.total, guard.streak) == (1, 1)
    assert not guard.finite(trainer, torch.tensor(float("nan"))) and (guard.total, guard.streak) == (2, 2)
    assert votes[-1] is False
    assert guard.finite(trainer, torch.tensor(0.5)) and (guard.total, guard.streak) == (2, 0)


def test_the_scorer_can_take_within_word_positions(data, tmp_path):
    """scorer.spell_pos: the ids come from the tokenizer, the tables train and travel with the export, and a
    scorer.json written before the option existed still reads."""
    from dalle.scorer import ScorerConfig

    d, shards, tok, _ = data
    preset = load_preset("tiny", LONG + ["scorer_train.max_steps=5", "scorer_train.ckpt_every=5",
                                          "scorer.spell_pos=8"])
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    out = fit_scorer(preset, tmp_path / "run", train_shards=shards[:2], tokenizer_path=tok, **QUIET)
    scorer = ImageTextScorer.from_checkpoint(out)
    cfg = scorer.config
    assert (cfg.spell_pos, cfg.spell_open_id, cfg.spell_close_id) == (8, tokenizer.spell_open, tokenizer.spell_close)
    assert scorer.text_encoder.spell_centre.weight.any()                 # trained on the signs' words
    old = cfg.to_dict()
    for key in ScorerConfig.ADDED_LATER:
        del old[key]
    assert ScorerConfig.from_dict(old, complete=True) == load_preset("tiny", LONG).scorer   # before the option


def test_init_from_may_add_within_word_positions_to_a_scorer_trained_without_them(data, tmp_path):
    """The one change --init-from allows: the caption encoder gets the tables at zero, so the scorer it
    starts from scores exactly as before; any other change is still refused."""
    from dalle.config import with_spelling_ids
    from train.scorer_fit import init_weights

    d, shards, tok, _ = data
    preset = load_preset("tiny", LONG + ["scorer_train.max_steps=2"])
    first = ImageTextScorer.from_checkpoint(fit_scorer(preset, tmp_path / "a", train_shards=shards[:2],
                                                       tokenizer_path=tok, **QUIET))
    tokenizer = TextTokenizer(tok, preset.dalle.text_len, preset.dalle.text_vocab_size)
    spelled = with_spelling_ids(load_preset("tiny", LONG + ["scorer.spell_pos=8"]).scorer, tokenizer)
    state = init_weights(tmp_path / "a" / "scorer", spelled, tokenizer.sha256)
    grown = ImageTextScorer(spelled)
    grown.load_state_dict(state)                                 # strict: every table is there
    assert not grown.text_encoder.spell_start.weight.any()
    batch = _batch(d, tokenizer, preset, n=64)
    first.eval(), grown.eval()
    with torch.no_grad():
        assert any(tokenizer.spell_open in row for row in batch["text_tokens"].tolist())   # signs spell their word
        assert torch.equal(first.text_encoder(batch["text_tokens"]), grown.text_encoder(batch["text_tokens"]))
    wider = with_spelling_ids(load_preset("tiny", LONG + ["scorer.spell_pos=8", "scorer.embed_dim=24"]).scorer,
                              tokenizer)
    with pytest.raises(ValueError, match="embed_dim"):
        init_weights(tmp_path / "a" / "scorer", wider, tokenizer.sha256)
