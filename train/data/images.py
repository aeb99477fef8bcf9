"""Images of a shard source decoded exactly as training decodes them (for evaluation and benchmarks)."""
from __future__ import annotations

from typing import Any

import torch

from train.config import DataConfig
from train.data.loader import image_dataset, make_loader


def load_images(source: Any, resolution: int, max_images: int, *, batch_size: int = 64,
                background: tuple[int, int, int] = (255, 255, 255)) -> torch.Tensor:
    """Up to ``max_images`` images of a source, decoded as for training: (N, 3, R, R) float in [0, 1].

    Raises:
        ValueError: the source holds no readable image.
    """
    cfg = DataConfig(resolution=resolution, num_workers=0, shuffle_buffer=0, background=list(background))
    stream = image_dataset(source if isinstance(source, list) else [source], cfg, batch_size=batch_size,
                           train=False, rank=0, world_size=1, captions=False)
    out: list[torch.Tensor] = []
    n = 0
    for batch in make_loader(stream, 0):
        out.append(batch["images"])
        n += batch["images"].shape[0]
        if n >= max_images:
            break
    if not out:
        raise ValueError(f"no readable images in {source}")
    return torch.cat(out)[:max_images]


def load_described_images(source: Any, resolution: int, max_images: int, *,
                          background: tuple[int, int, int] = (255, 255, 255),
                          ) -> tuple[torch.Tensor, list[dict[str, Any]] | None]:
    """Like :func:`load_images`, with each sample's ``.json`` truth: ``(images, descriptions)``.

    ``descriptions`` is None unless every image has a description the checker can read (a
    ``kind`` of ``scene`` or ``sign`` and its ``claims``, as the built-in builders write).
    Samples are read in shard order, decoded by the training decoder; unusable ones are skipped.
    """
    import json

    import webdataset as wds

    from common.image_decode import DecodeSettings, SkipSample, decode_image_uint8, to_float
    from common.samples import SkipCounter, find_image, read_samples
    from common.shards import expand_sources

    cfg = DecodeSettings(background=list(background))
    images, descriptions, described = [], [], True
    urls = expand_sources(source if isinstance(source, list) else [source])
    counter = SkipCounter()
    for sample in read_samples(urls, counter, handler=wds.reraise_exception):    # an unreadable shard is an error
        try:
            image = decode_image_uint8(find_image(sample), cfg, resolution=resolution)
        except SkipSample as e:
            counter.add(e.reason)
            continue
        try:
            desc = json.loads(sample["json"]) if "json" in sample else None
        except (ValueError, UnicodeDecodeError):
            desc = None
        if not (isinstance(desc, dict) and desc.get("kind") in ("scene", "sign") and "claims" in desc):
            described = False
        images.append(to_float(image))
        descriptions.append(desc)
        if len(images) >= max_images:
            break
    if not images:
        raise ValueError(f"no readable images in {source}")
    return torch.stack(images), (descriptions if described else None)
