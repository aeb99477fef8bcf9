"""Lightning training of :class:`vqvae.patch_vq.PatchVQ` (stage 1, ``vqvae.kind: patch_vq``).

At the start of a fresh run the k-means codebook is fitted on the patches of the
first ``vqvae_train.kmeans_images`` training images (rank 0 fits, every rank gets
its centroids), and the codebook-only tokenizer is exported to
``out_dir/export_codebook``: its codes are final, because training never changes
the encoder, so token shards for the transformer can be made from it while the
decoder trains. Then the context decoder learns to redraw each cell from the
grid of codes: mean squared error plus ``edge_weight`` times the L1 distance of
the image gradients (edges are where letters and small shapes live and where a
plain MSE is content to blur). Logging, skipped-sample counts, reconstruction
grids, checkpoints and export are the dVAE module's.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Mapping

import lightning as L
import torch

from train.vqvae_module import VQVAEModule
from vqvae.metrics import psnr
from vqvae.patch_vq import PatchVQ

log = logging.getLogger(__name__)

CODEBOOK_EXPORT = "export_codebook"


def edge_loss(images: torch.Tensor, recon: torch.Tensor) -> torch.Tensor:
    """Mean L1 distance between the horizontal and vertical pixel differences of two image batches."""
    dx = lambda x: x[..., :, 1:] - x[..., :, :-1]   # noqa: E731
    dy = lambda x: x[..., 1:, :] - x[..., :-1, :]   # noqa: E731
    return (dx(images) - dx(recon)).abs().mean() + (dy(images) - dy(recon)).abs().mean()


class PatchVQModule(VQVAEModule):
    """Trains a :class:`PatchVQ`: k-means codebook first, then the context decoder."""

    model_class = PatchVQ

    # ---- the codebook ----------------------------------------------------------------------
    def on_fit_start(self) -> None:
        if bool(self.model.fitted):                  # resumed run, or a model given fitted
            return
        cfg = self.train_cfg
        if self.trainer.is_global_zero:
            images, n = [], 0
            for batch in self.trainer.datamodule.train_dataloader():
                images.append(batch["images"])
                n += batch["images"].shape[0]
                if n >= cfg.kmeans_images:
                    break
            x = torch.cat(images)[:cfg.kmeans_images]
            log.info("fitting the %d-code k-means codebook on the patches of %d images",
                     self.vqvae_cfg.vocab_size, x.shape[0])
            self.model.fit_codebook(x, iters=cfg.kmeans_iters, seed=cfg.seed)
        self.model.centroids.copy_(self.trainer.strategy.broadcast(self.model.centroids.cpu(), src=0)
                                   .to(self.model.centroids.device))
        self.model.embed.weight.data.copy_(self.model.centroids)
        self.model.fitted.fill_(True)
        if self.trainer.is_global_zero and self.out_dir is not None:
            path = self.model.save(self.out_dir / CODEBOOK_EXPORT)
            log.info("codebook fixed: its codes are final; tokenizer with the untrained decoder in %s", path)

    # ---- steps ------------------------------------------------------------------------------
    def training_step(self, batch: Mapping[str, Any], batch_idx: int) -> torch.Tensor:
        images = batch["images"]                                      # (B, 3, R, R) in [0, 1]
        codes, recon = self.model(images)
        mse = torch.nn.functional.mse_loss(recon, images)
        edges = edge_loss(images, recon)
        loss = mse + self.train_cfg.edge_weight * edges
        self.usage.update(self.all_gather(codes))
        self._add_skipped(batch.get("skipped") or {})
        bs = images.shape[0]
        self.log_dict({"train/loss": loss, "train/recon": mse, "train/edge": edges,
                       "train/psnr_hard": psnr(images, recon.detach().clamp(0, 1))},
                      on_step=True, on_epoch=False, batch_size=bs)
        self.log("loss", loss, prog_bar=True, logger=False, on_step=True, batch_size=bs)
        if self._is_log_step() or (self.global_step + 1) % max(1, self.train_cfg.ckpt_every) == 0:
            self._sync_skipped()
        if self._is_log_step():
            self.log_dict({"codebook/usage": self.usage.usage(), "codebook/perplexity": self.usage.perplexity(),
                           "codebook/dead": self.usage.n_dead().float()},
                          on_step=True, on_epoch=False, batch_size=bs)
            self.log_dict({f"skipped/{k}": float(v) for k, v in sorted(self.skipped_total.items())},
                          on_step=True, on_epoch=False, batch_size=bs)
        return loss

    def validation_step(self, batch: Mapping[str, Any], batch_idx: int) -> None:
        images = batch["images"]
        recon = self.model.decode(self.model.encode(images))
        self.log_dict({"val/recon": torch.nn.functional.mse_loss(recon, images), "val/psnr": psnr(images, recon)},
                      on_step=False, on_epoch=True, batch_size=images.shape[0], sync_dist=True)

    def optimizer_step(self, *args: Any, **kwargs: Any) -> None:
        """A plain optimizer step: the codebook is k-means', so there are no dead codes to restart."""
        L.LightningModule.optimizer_step(self, *args, **kwargs)

    def export(self, directory: str | Path) -> Path:
        """Write the inference weights (``PatchVQ.save``) into ``directory``."""
        return self.model.save(directory)


def fit_codebook(config: Any, sources: list[Any], images_per_source: list[int], out_dir: str | Path, *,
                 iters: int = 15, seed: int = 0, recolour: int | list[int] = 0,
                 init_from: str | Path | None = None) -> tuple[Path, dict[str, Any]]:
    """Fit a :class:`PatchVQ` codebook on the first images of each source and export it (untrained decoder).

    ``dalle vqvae codebook`` calls this; the export encodes exactly as every later training of its
    decoder (``dalle vqvae train --init-from``), so token shards can be made from it at once.

    Args:
        config: the :class:`vqvae.patch_vq.PatchVQConfig`.
        sources: shard sources; images_per_source: how many images to read from each.
        out_dir: where ``vqvae.json`` + ``vqvae.safetensors`` go.
        iters, seed: k-means iterations and seed.
        recolour: N > 0 uses each built-in scene and sign as N renderings in random palette colours
            instead of its own (:mod:`synth.recolour`; every colour-shape pair then as frequent as any
            other, held-out pairs included: keeping the originals beside them kept the held-out
            ceiling at 0.974-0.976 against 1.000, BENCHMARKS.md); other images are used as they
            are. One number for every source or one per source.
        init_from: an exported PatchVQ (or bundle) whose codebook the fit starts from; the new codes
            are then renumbered so that most training patches keep their code index
            (:func:`vqvae.kmeans.match_codes`): a transformer trained on the old codes fine-tunes
            onto the new ones instead of starting over.
    Returns:
        The export's path and statistics: images used, and with ``init_from`` the share of training
        patches whose code index is unchanged.
    """
    import numpy as np

    from synth.recolour import render_recoloured
    from train.data.images import load_described_images, load_images
    from vqvae.kmeans import match_codes, to_patches
    from vqvae.registry import load_image_tokenizer

    copies = [recolour] * len(sources) if isinstance(recolour, int) else list(recolour)
    if len(sources) != len(images_per_source) or len(copies) != len(sources):
        raise ValueError(f"give one image count and one recolour count per source ({len(sources)} sources, "
                         f"{len(images_per_source)} image counts, {len(copies)} recolour counts)")
    old = None
    if init_from is not None:
        old = load_image_tokenizer(init_from)
        if not isinstance(old, PatchVQ):
            raise ValueError(f"{init_from} is not a PatchVQ image tokenizer; a codebook can only start from one")
        oc = old.config
        if (oc.resolution, oc.patch, oc.in_channels) != (config.resolution, config.patch, config.in_channels) \
                or oc.vocab_size > config.vocab_size:
            raise ValueError(f"{init_from} has resolution {oc.resolution}, patch {oc.patch}, {oc.vocab_size} codes; "
                             f"this codebook needs {config.resolution}, {config.patch}, at most {config.vocab_size}")
    rng = np.random.default_rng(seed)
    parts = []
    for s, n, k in zip(sources, images_per_source, copies):
        if not k:
            parts.append(load_images(s, config.resolution, n))
            continue
        x, descriptions = load_described_images(s, config.resolution, n)
        recoloured = [[render_recoloured(d, config.resolution, rng) for d in descriptions or []] for _ in range(k)]
        if not recoloured[0] or any(c is None for c in recoloured[0]):
            parts.append(x)                       # not built-in scenes or signs: used as they are
            continue
        parts.extend(torch.stack(r) for r in recoloured)
    x = torch.cat(parts)
    model = PatchVQ(config)
    log.info("fitting the %d-code k-means codebook on the patches of %d images", config.vocab_size, x.shape[0])
    model.fit_codebook(x, iters=iters, seed=seed, init=None if old is None else old.centroids)
    stats: dict[str, Any] = {"images": int(x.shape[0])}
    if old is not None:
        patches, counts = torch.unique(to_patches(x, config.patch).reshape(-1, config.patch_dim), dim=0,
                                       return_counts=True)
        order, kept = match_codes(old.encode_patches(patches), model.encode_patches(patches),
                                  config.vocab_size, counts)
        model.renumber(order)
        stats["same_code_share"] = kept
        log.info("codes renumbered to match %s: %.1f%% of training patches keep their code index",
                 init_from, 100 * kept)
    return model.save(out_dir), stats
