"""Codebook health: usage over a sliding window of codes, perplexity, dead-code restart.

:class:`CodeUsage` keeps the most recent ``window`` code ids in a ring buffer
(persistent buffers, so they travel in the Lightning checkpoint).

Dead-code restart (:func:`restart_dead_codes`): a code that never appeared
among the last ``window`` codes is "dead". For each dead code ``k`` we pick a
random code position of the current batch with encoder features ``f`` (the
activations right before the logit head, after its ReLU) and set

- the encoder's output-logit row ``W_enc[k] = f * (mean live row norm / |f|)``
  and its bias to the mean live bias, so code ``k`` responds most strongly to
  features like ``f`` (its logit there is ``|W| |f|``, the largest a row of that
  norm can give), and
- the decoder's input column ``W_dec[:, k]`` (and nothing else) to the column
  of the code the encoder currently picks at that position, so taking over that
  position does not change the reconstruction at first.

The optimiser's moment estimates for those rows/columns are zeroed by the caller.
"""
from __future__ import annotations

import torch
from torch import nn

from vqvae.metrics import code_perplexity, codebook_usage
from vqvae.model import DiscreteVAE


class CodeUsage(nn.Module):
    """Ring buffer of the last ``window`` code ids and statistics over it.

    The ring is a persistent buffer and the write position / counters are the
    module's extra state, so all of it is in ``state_dict()`` (and therefore
    in Lightning checkpoints). Updating never synchronises with the device.
    """

    def __init__(self, vocab_size: int, window: int) -> None:
        super().__init__()
        if vocab_size < 1 or window < 1:
            raise ValueError("vocab_size and window must be positive")
        self.vocab_size = vocab_size
        self.window = window
        self.register_buffer("ring", torch.full((window,), -1, dtype=torch.long))
        self.pos = 0               # next write index
        self.seen = 0              # codes ever added
        self.seen_at_restart = 0   # value of ``seen`` at the last restart

    def get_extra_state(self) -> dict[str, int]:
        return {"pos": self.pos, "seen": self.seen, "seen_at_restart": self.seen_at_restart}

    def set_extra_state(self, state: dict[str, int]) -> None:
        self.pos = int(state["pos"])
        self.seen = int(state["seen"])
        self.seen_at_restart = int(state["seen_at_restart"])

    @torch.no_grad()
    def update(self, codes: torch.Tensor) -> None:
        """Append codes (any shape, int) to the window, dropping the oldest."""
        flat = codes.detach().reshape(-1).to(self.ring.device, torch.long)
        n = flat.numel()
        if n == 0:
            return
        if n >= self.window:
            self.ring.copy_(flat[-self.window:])
            self.pos = 0
        else:
            idx = (torch.arange(n, device=self.ring.device) + self.pos) % self.window
            self.ring[idx] = flat
            self.pos = (self.pos + n) % self.window
        self.seen += n

    @property
    def full(self) -> bool:
        """Whether the window has been filled at least once."""
        return self.seen >= self.window

    def counts(self) -> torch.Tensor:
        """(vocab_size,) occurrences of each code in the window."""
        valid = self.ring.clamp_min(0)
        weights = (self.ring >= 0).to(torch.float32)
        return torch.bincount(valid, weights=weights, minlength=self.vocab_size)[: self.vocab_size]

    def usage(self) -> torch.Tensor:
        """Fraction of the codebook that occurs in the window (0-dim tensor)."""
        return codebook_usage(self.counts())

    def perplexity(self) -> torch.Tensor:
        """exp(entropy) of the code distribution in the window, in [1, vocab_size] (0 if empty)."""
        return code_perplexity(self.counts())

    def n_dead(self) -> torch.Tensor:
        """Number of codes absent from the window (0-dim tensor)."""
        return (self.counts() == 0).sum()

    def dead_codes(self) -> torch.Tensor:
        """Code ids absent from the window (int64)."""
        return torch.nonzero(self.counts() == 0).flatten()

    def due_for_restart(self, usage_target: float) -> bool:
        """Restart when usage is below target and a whole window was seen since the last restart."""
        if self.seen - self.seen_at_restart < self.window:
            return False
        return float(self.usage()) < usage_target

    def mark_restart(self) -> None:
        """Remember that codes were restarted now (the next check waits a whole window)."""
        self.seen_at_restart = self.seen


@torch.no_grad()
def restart_dead_codes(model: DiscreteVAE, dead: torch.Tensor, features: torch.Tensor,
                       generator: torch.Generator | None = None) -> int:
    """Re-initialise dead codes from random encoder features (see the module docstring).

    Args:
        model: the dVAE being trained (modified in place).
        dead: (K,) int64 dead code ids.
        features: (B, F, h, w) encoder features of the current batch (before the head's ReLU).
        generator: optional CPU RNG choosing the positions.
    Returns:
        The number of codes re-initialised.
    """
    if dead.numel() == 0:
        return 0
    head = model.encoder.head[-1]                               # Conv2d(F, V, 1)
    dec_in = model.decoder.input                                # Conv2d(V, n_init, 1)
    w_enc = head.weight.view(head.out_channels, -1)             # (V, F)
    w_dec = dec_in.weight.view(dec_in.out_channels, -1)         # (n_init, V)
    dead = dead.to(w_enc.device)

    f = torch.relu(features.detach()).to(w_enc.dtype)
    f = f.permute(0, 2, 3, 1).reshape(-1, f.shape[1])           # (B*h*w, F)
    pick = torch.randint(f.shape[0], (dead.numel(),), generator=generator).to(f.device)
    chosen = f[pick]                                            # (K, F)
    current = (chosen @ w_enc.t() + head.bias).argmax(dim=1)    # (K,) codes in use there

    live = torch.ones(w_enc.shape[0], dtype=torch.bool, device=w_enc.device)
    live[dead] = False
    if live.any():
        row_norm = w_enc[live].norm(dim=1).mean()
        bias = head.bias[live].mean()
    else:
        row_norm = w_enc.norm(dim=1).mean()
        bias = head.bias.mean()
    scale = row_norm / chosen.norm(dim=1, keepdim=True).clamp_min(1e-6)   # (K, 1)
    w_enc[dead] = chosen * scale
    head.bias[dead] = bias
    w_dec[:, dead] = w_dec[:, current]
    return int(dead.numel())
