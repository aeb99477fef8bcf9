"""CUDA-only sampling paths: the bf16 KV cache, compiled decoding, guidance on the device.

Skipped without CUDA (marker ``gpu``: ``pytest -m gpu`` runs only these). The
CPU suite proves cached == uncached exactly in float32; here the same
invariants are checked where the sampler differs on CUDA: ``dtype="auto"``
means bfloat16 autocast and a bfloat16 cache, and ``compile`` wraps the decode
step in ``torch.compile``.

Tolerance of the bf16 cache: the conditional log-probability the sampler
reports for each sampled code is compared with a float32 recomputation of the
same codes by one uncached forward; bf16 keeps about 3 significant digits, so
per code the gap must stay below ``BF16_ATOL`` (0.1 nats) and on average below
``BF16_MEAN_ATOL`` (0.02 nats).
"""
from __future__ import annotations

import pytest
import torch

from dalle.model import DalleTransformer
from dalle.sampler import sample
from dalle.tokenizer import null_tokens
from tests.bundles import random_transformer
from train.config import load_preset

pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")]

BF16_ATOL = 0.1
BF16_MEAN_ATOL = 0.02


def cuda_model(seed: int = 0) -> DalleTransformer:
    cfg = load_preset("tiny", ["dalle.conv_kernel=3"]).dalle
    torch.manual_seed(seed)
    return random_transformer(cfg).cuda()   # larger weights than the init: distinct, non-uniform distributions


def captions(model: DalleTransformer, B: int, seed: int = 0) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    return torch.randint(0, model.config.text_vocab_size, (B, model.config.text_len), generator=g).cuda()


def recomputed_logprobs(model: DalleTransformer, text: torch.Tensor, image_tokens: torch.Tensor) -> torch.Tensor:
    """float32 log p(code_j | text, codes_<j) of the given codes, one uncached forward, (B, image_len)."""
    with torch.no_grad():
        logits = model(text, image_tokens[:, :-1]).image.float()            # (B, image_len, Vi)
    return torch.log_softmax(logits, -1).gather(-1, image_tokens[..., None]).squeeze(-1)


def test_float32_cache_equals_recompute_on_cuda():
    model = cuda_model()
    text = captions(model, 4)
    opts = dict(seeds=[1, 2, 3, 4], temperature=0.9, top_k=20, dtype="float32")
    cached = sample(model, text, **opts)
    slow = sample(model, text, use_cache=False, **opts)
    assert cached.image_tokens.is_cuda
    assert torch.equal(cached.image_tokens, slow.image_tokens)
    torch.testing.assert_close(cached.logprobs, slow.logprobs, atol=1e-4, rtol=0)


def test_bf16_cached_decoding_matches_float32_recomputation():
    model = cuda_model()
    text = captions(model, 8)
    out = sample(model, text, seeds=list(range(8)), temperature=1.0)     # dtype "auto": bf16 on CUDA
    assert next(model.parameters()).dtype == torch.float32                # the caller's model is untouched
    exact = recomputed_logprobs(model, text, out.image_tokens)
    gap = (out.logprobs - exact).abs()
    assert gap.max().item() < BF16_ATOL, gap.max().item()
    assert gap.mean().item() < BF16_MEAN_ATOL, gap.mean().item()
    # and greedy bf16 decoding agrees with the float32 argmax nearly everywhere
    greedy = sample(model, text, seeds=list(range(8)), top_k=1)
    with torch.no_grad():
        argmax = model(text, greedy.image_tokens[:, :-1]).image.float().argmax(-1)   # (B, image_len)
    assert (greedy.image_tokens == argmax).float().mean().item() > 0.95


def test_compiled_decode_equals_eager():
    model = cuda_model(seed=1)
    text = captions(model, 3, seed=1)
    opts = dict(seeds=[5, 6, 7], temperature=0.8, top_p=0.9, dtype="float32")
    eager = sample(model, text, **opts)
    compiled = sample(model, text, compile="default", **opts)
    assert torch.equal(compiled.image_tokens, eager.image_tokens)
    torch.testing.assert_close(compiled.logprobs, eager.logprobs, atol=1e-4, rtol=0)


def test_guidance_one_equals_the_conditional_path_on_cuda():
    model = cuda_model(seed=2)
    text = captions(model, 3, seed=2)
    null = null_tokens(model.config.text_vocab_size, model.config.text_len, 3, device="cuda")
    plain = sample(model, text, seeds=[1, 2, 3], top_k=10, dtype="float32")
    guided = sample(model, text, null_text_tokens=null, guidance=1.0, seeds=[1, 2, 3], top_k=10, dtype="float32")
    assert torch.equal(plain.image_tokens, guided.image_tokens)
