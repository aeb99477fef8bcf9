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
                 iters: int = 15, seed: int = 0) -> Path:
    """Fit a :class:`PatchVQ` codebook on the first images of each source and export it (untrained decoder).

    ``dalle vqvae codebook`` calls this; the export encodes exactly as every later training of its
    decoder (``dalle vqvae train --init-from``), so token shards can be made from it at once.

    Args:
        config: the :class:`vqvae.patch_vq.PatchVQConfig`.
        sources: shard sources; images_per_source: how many images to read from each.
        out_dir: where ``vqvae.json`` + ``vqvae.safetensors`` go.
        iters, seed: k-means iterations and seed.
    """
    from train.data.images import load_images

    if len(sources) != len(images_per_source):
        raise ValueError(f"give one image count per source ({len(sources)} sources, "
                         f"{len(images_per_source)} counts)")
    x = torch.cat([load_images(s, config.resolution, n) for s, n in zip(sources, images_per_source)])
    model = PatchVQ(config)
    log.info("fitting the %d-code k-means codebook on the patches of %d images", config.vocab_size, x.shape[0])
    model.fit_codebook(x, iters=iters, seed=seed)
    return model.save(out_dir)
