"""Attention layouts: masks vs hand-built references, flex vs SDPA, information flow."""
import warnings

import pytest
import torch
import torch.nn.functional as F

from dalle.attention import HAS_FLEX, LayoutMasks, full_attention, layout_mask, use_math
from dalle.config import ATTN_LAYOUTS, DalleConfig
from dalle.model import DalleTransformer

TEXT_LEN, GRID, KERNEL = 3, 5, 3


def small_cfg(layout: str, **kw) -> DalleConfig:
    base = dict(text_len=TEXT_LEN, text_vocab_size=20, image_vocab_size=16, image_grid=GRID, n_layer=1,
                n_head=2, n_embd=16, attn_layouts=[layout], conv_kernel=KERNEL)
    base.update(kw)
    return DalleConfig(**base)


def reference_mask(layout: str, text_len: int, grid: int, kernel: int) -> torch.Tensor:
    """The layout written out with plain loops over (query, key) pairs."""
    S = text_len + grid * grid
    mask = torch.zeros(S, S, dtype=torch.bool)
    for q in range(S):
        for k in range(S):
            if k > q:
                continue                                   # causal everywhere
            if q < text_len or k < text_len:
                mask[q, k] = True                          # causal text; every image token sees all text
                continue
            qi, ki = q - text_len, k - text_len
            qr, qc, kr, kc = qi // grid, qi % grid, ki // grid, ki % grid
            if layout == "dense":
                ok = True
            elif layout == "row":
                # earlier tokens of the current row, and of the previous row from the query's column on
                ok = (kr == qr and kc <= qc) or (kr == qr - 1 and kc >= qc)
            elif layout == "column":
                ok = kc == qc
            else:  # conv: causal k x k neighbourhood
                ok = qr - kr <= kernel // 2 and abs(qc - kc) <= kernel // 2
            mask[q, k] = ok
    return mask


@pytest.mark.parametrize("layout", ATTN_LAYOUTS)
def test_layout_matches_hand_built_reference(layout):
    cfg = small_cfg(layout)
    got = layout_mask(layout, cfg)
    want = reference_mask(layout, TEXT_LEN, GRID, KERNEL)
    assert torch.equal(got, want), (got.int() - want.int()).nonzero()[:5]


def test_layouts_differ_and_are_sparser_than_dense():
    cfg = small_cfg("dense")
    dense = layout_mask("dense", cfg)
    for layout in ("row", "column", "conv"):
        m = layout_mask(layout, cfg)
        assert not torch.equal(m, dense)
        assert (m & ~dense).sum() == 0          # a subset of causal attention
        assert m.diagonal().all()                # every query sees itself (no empty softmax row)


def test_row_layout_matches_paper_figure():
    # DALL·E Fig. 11a (6 text tokens, 4x4 grid): image token 8 sees tokens 4..8 among the image
    cfg = small_cfg("row", text_len=6, image_grid=4)
    m = layout_mask("row", cfg)
    seen = (m[6 + 8, 6:].nonzero().flatten()).tolist()
    assert seen == [4, 5, 6, 7, 8]
    assert m[6 + 8, :6].all()


def test_conv_kernel_one_is_self_and_left_neighbours_only():
    cfg = small_cfg("conv", conv_kernel=1)
    m = layout_mask("conv", cfg)[TEXT_LEN:, TEXT_LEN:]
    assert torch.equal(m, torch.eye(GRID * GRID, dtype=torch.bool))


@pytest.mark.skipif(not HAS_FLEX, reason="FlexAttention not available in this torch")
@pytest.mark.parametrize("layout", ("row", "column", "conv"))
def test_flex_and_sdpa_agree(layout):
    cfg = small_cfg(layout)
    masks = LayoutMasks(cfg)
    g = torch.Generator().manual_seed(0)
    for T in (cfg.block_size, cfg.block_size - 1):
        q, k, v = (torch.randn(2, 2, T, 8, generator=g) for _ in range(3))
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                flex = masks.flex(q, k, v, layout)
        except (RuntimeError, NotImplementedError) as e:  # flex unsupported on this CPU build
            pytest.skip(f"flex_attention does not run on CPU here: {e}")
        ref = F.scaled_dot_product_attention(q, k, v, attn_mask=masks.bool_mask(layout, q.device)[:T, :T])
        torch.testing.assert_close(flex, ref, atol=1e-5, rtol=1e-5)


@pytest.mark.skipif(not HAS_FLEX, reason="FlexAttention not available in this torch")
def test_model_flex_backend_matches_sdpa_backend():
    cfg = small_cfg("row", n_layer=2, attn_layouts=["row", "conv"])
    model = DalleTransformer(cfg).eval()
    text = torch.randint(0, cfg.text_vocab_total, (2, cfg.text_len))
    image = torch.randint(0, cfg.image_vocab_size, (2, cfg.image_len - 1))
    model.attn_backend = "sdpa"
    with torch.no_grad():
        ref = model(text, image)
    model.attn_backend = "flex"
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            got = model(text, image)
    except (RuntimeError, NotImplementedError) as e:
        pytest.skip(f"flex_attention does not run on CPU here: {e}")
    torch.testing.assert_close(got.image, ref.image, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(got.text, ref.text, atol=1e-5, rtol=1e-5)


@pytest.mark.parametrize("layout", ATTN_LAYOUTS)
def test_one_layer_information_flow_follows_the_mask(layout):
    """With one layer, output j changes when input i changes iff the mask lets j see i."""
    cfg = small_cfg(layout)
    model = DalleTransformer(cfg).eval()
    mask = layout_mask(layout, cfg)
    text = torch.randint(0, cfg.text_vocab_size, (1, cfg.text_len))
    image = torch.randint(0, cfg.image_vocab_size, (1, cfg.image_len - 1))
    base = model(text, image).image[0]                          # output at seq pos TEXT_LEN-1+j
    query = TEXT_LEN + 2 * GRID + 2                             # image token (2, 2) as input position
    out_idx = query - (TEXT_LEN - 1)
    for key_img in range(query - TEXT_LEN):
        changed = image.clone()
        changed[0, key_img] = (changed[0, key_img] + 1) % cfg.image_vocab_size
        moved = (model(text, changed).image[0, out_idx] - base[out_idx]).abs().max() > 1e-6
        assert bool(moved) == bool(mask[query, TEXT_LEN + key_img]), key_img


@pytest.mark.parametrize("layout", ATTN_LAYOUTS)
def test_written_out_attention_matches_sdpa_in_values_and_gradients(layout):
    cfg = small_cfg(layout)
    masks = LayoutMasks(cfg)
    g = torch.Generator().manual_seed(1)
    for T in (cfg.block_size, cfg.block_size - 1):
        qkv = [torch.randn(2, 2, T, 8, generator=g, requires_grad=True) for _ in range(3)]
        grad = torch.randn(2, 2, T, 8, generator=g)
        outs = []
        for backend in ("math", "sdpa"):
            y = full_attention(*qkv, layout=layout, masks=masks, backend=backend)
            outs.append((y, *torch.autograd.grad(y, qkv, grad)))
        for got, ref in zip(*outs):
            torch.testing.assert_close(got, ref, atol=1e-5, rtol=1e-5)


def test_auto_backend_writes_attention_out_on_a_cpu_in_bf16_only():
    cpu, cuda, bf16, fp32 = torch.device("cpu"), torch.device("cuda"), torch.bfloat16, torch.float32
    assert use_math("auto", cpu, bf16) and not use_math("auto", cpu, fp32) and not use_math("auto", cuda, bf16)
    assert use_math("math", cpu, fp32) and use_math("math", cuda, bf16)
    assert not use_math("sdpa", cpu, bf16) and not use_math("flex", cpu, bf16)
    with pytest.raises(ValueError, match="unknown attention backend"):
        use_math("xformers", cpu, bf16)


def test_model_trains_alike_with_written_out_and_sdpa_attention():
    """One training step's loss and gradients agree in fp32 and, to bf16's precision, under autocast."""
    cfg = small_cfg("dense", n_layer=2, attn_layouts=["dense", "row"])
    text = torch.randint(0, cfg.text_vocab_total, (2, cfg.text_len))
    image = torch.randint(0, cfg.image_vocab_size, (2, cfg.image_len))
    for autocast, tol in ((False, 1e-5), (True, 3e-2)):
        results = []
        for backend in ("math", "sdpa"):
            torch.manual_seed(0)
            model = DalleTransformer(cfg)
            model.attn_backend = backend
            with torch.autocast("cpu", dtype=torch.bfloat16, enabled=autocast):
                logits = model(text, image[:, :-1]).image
            loss = F.cross_entropy(logits.float().flatten(0, 1), image.flatten())
            loss.backward()
            results.append((loss.detach(), torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])))
        (loss_m, grad_m), (loss_s, grad_s) = results
        torch.testing.assert_close(loss_m, loss_s, atol=tol, rtol=tol)
        assert (grad_m - grad_s).norm() <= tol * grad_s.norm()
