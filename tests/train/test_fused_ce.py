"""train.fused_ce: the chunked image loss equals logits-then-cross-entropy, in value and gradients."""
import pytest
import torch
import torch.nn.functional as F

from dalle.model import DalleTransformer
from train.config import load_preset
from train.dalle_module import DalleModule, dalle_loss
from train.fused_ce import linear_cross_entropy


def _reference(h, w, y):
    h = h.clone().requires_grad_()
    w = w.clone().requires_grad_()
    loss = F.cross_entropy(F.linear(h, w).float(), y)
    loss.backward()
    return loss.detach(), h.grad, w.grad


@pytest.mark.parametrize("chunk", [1, 7, 64, 1000])
def test_fp32_value_and_gradients_match_the_plain_loss(chunk):
    g = torch.Generator().manual_seed(0)
    h, w = torch.randn(50, 16, generator=g), torch.randn(40, 16, generator=g)
    y = torch.randint(0, 40, (50,), generator=g)
    ref_loss, ref_gh, ref_gw = _reference(h, w, y)
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy(hh, ww, y, chunk=chunk)
    (3.0 * loss).backward()                        # the outer weight scales both gradients
    assert loss.dtype == torch.float32
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(hh.grad, 3.0 * ref_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ww.grad, 3.0 * ref_gw, rtol=1e-4, atol=1e-6)


def test_a_target_whose_probability_underflows_still_gets_its_exact_loss():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(20, 8, generator=g), torch.randn(30, 8, generator=g)
    y = torch.randint(0, 30, (20,), generator=g)
    h[3], w[y[3]] = 20.0, -20.0                  # row 3's target logit ~3,200 below the others: exp underflows
    ref_loss, ref_gh, ref_gw = _reference(h, w, y)
    assert ref_loss > 100
    hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
    loss = linear_cross_entropy(hh, ww, y, chunk=8)
    loss.backward()
    torch.testing.assert_close(loss, ref_loss, rtol=1e-5, atol=1e-4)
    torch.testing.assert_close(hh.grad, ref_gh, rtol=1e-4, atol=1e-6)
    torch.testing.assert_close(ww.grad, ref_gw, rtol=1e-4, atol=1e-6)


def test_bf16_autocast_is_as_close_as_the_plain_bf16_head():
    g = torch.Generator().manual_seed(1)
    h, w = torch.randn(300, 32, generator=g), 0.1 * torch.randn(500, 32, generator=g)
    y = torch.randint(0, 500, (300,), generator=g)
    exact = _reference(h.double(), w.double(), y)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        plain = _reference(h, w, y)
        hh, ww = h.clone().requires_grad_(), w.clone().requires_grad_()
        loss = linear_cross_entropy(hh, ww, y, chunk=64)
    loss.backward()
    assert hh.grad.dtype == torch.float32 and ww.grad.dtype == torch.float32

    def err(a, b):
        return float((a.detach().double() - b).norm() / b.norm())
    for ours, theirs, ref in ((loss, plain[0], exact[0]), (hh.grad, plain[1], exact[1]), (ww.grad, plain[2], exact[2])):
        assert err(ours, ref) <= 2 * err(theirs, ref) + 1e-3


def test_without_grad_it_only_computes_the_loss():
    h, w, y = torch.randn(8, 4), torch.randn(6, 4), torch.randint(0, 6, (8,))
    with torch.no_grad():
        loss = linear_cross_entropy(h.requires_grad_(), w, y, chunk=3)
    assert not loss.requires_grad
    torch.testing.assert_close(loss, F.cross_entropy(h.detach() @ w.T, y))


def test_bad_shapes_are_refused():
    with pytest.raises(ValueError, match="targets"):
        linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 3), torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="weight"):
        linear_cross_entropy(torch.randn(4, 3), torch.randn(5, 2), torch.zeros(4, dtype=torch.long))


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_the_module_loss_and_gradients_do_not_depend_on_the_fused_path(precision):
    preset = load_preset("tiny", ["dalle_train.caption_dropout=0.0"])
    cfg = preset.dalle
    torch.manual_seed(0)
    base = DalleTransformer(cfg)
    g = torch.Generator().manual_seed(0)
    batch = {"text_tokens": torch.randint(0, cfg.text_vocab_size, (4, cfg.text_len), generator=g),
             "image_tokens": torch.randint(0, cfg.image_vocab_size, (4, cfg.image_len), generator=g)}
    results = []
    for fused in (False, True):
        train_cfg = load_preset("tiny", ["dalle_train.caption_dropout=0.0",
                                         f"dalle_train.fused_image_loss={str(fused).lower()}"]).dalle_train
        module = DalleModule(cfg, train_cfg)
        module.configure_model()
        module.model.load_state_dict(base.state_dict())
        with torch.autocast("cpu", dtype=torch.bfloat16, enabled=precision == "bf16"):
            out = module.compute_loss(batch)
        out.loss.backward()
        results.append((out, {n: p.grad.clone() for n, p in module.model.named_parameters()}))
    (plain, plain_grads), (fused, fused_grads) = results
    tol = {"rtol": 1e-4, "atol": 1e-5} if precision == "fp32" else {"rtol": 0.05, "atol": 2e-3}
    torch.testing.assert_close(fused.loss, plain.loss, **tol)
    torch.testing.assert_close(fused.image_loss, plain.image_loss, **tol)
    torch.testing.assert_close(fused.text_loss, plain.text_loss, **tol)
    for name, grad in plain_grads.items():
        torch.testing.assert_close(fused_grads[name], grad, **tol, msg=name)
    with torch.no_grad():
        ref = dalle_loss(base(batch["text_tokens"], batch["image_tokens"][:, :-1]), batch["text_tokens"],
                         batch["image_tokens"], 1.0 / 8)
    if precision == "fp32":
        torch.testing.assert_close(fused.loss.detach(), ref.loss, rtol=1e-4, atol=1e-5)
