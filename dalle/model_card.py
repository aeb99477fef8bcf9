"""The README.md of a model bundle: a Hugging Face-style model card with a YAML header.

A bundle directory then reads as a hub model folder as it is (``README.md`` with
``license``, ``pipeline_tag: text-to-image``, ``tags``, ``datasets``), so it can be
uploaded without changes; there is no upload code here.
"""
from __future__ import annotations

from typing import Any

import yaml

from vqvae.patch_vq import PatchVQConfig

CARD = "README.md"
TAGS = ["text-to-image", "dalle", "autoregressive", "transformer", "vq-vae"]


def card_header(meta: dict[str, Any]) -> dict[str, Any]:
    """The YAML front matter (license, library, pipeline tag, tags, datasets, language)."""
    header: dict[str, Any] = {"license": meta.get("license", "mit"), "library_name": "dalle",
                              "pipeline_tag": "text-to-image", "tags": list(TAGS), "language": ["en"]}
    datasets = [str(d) for d in meta.get("datasets") or []]
    if datasets:
        header["datasets"] = datasets
    return header


def _tokenizer_words(image_config: Any) -> str:
    """What the image tokenizer is, in words, from its config class."""
    if isinstance(image_config, PatchVQConfig):
        metric = ("" if image_config.chroma_weight is None
                  else f", codes chosen by luma + {image_config.chroma_weight:g} x chroma distance")
        return f"a k-means codebook of pixel patches (PatchVQ{metric})"
    return "a discrete VAE"


def model_card(model_config: Any, image_config: Any, meta: dict[str, Any], body: str | None = None) -> str:
    """README.md text for a bundle.

    Args:
        model_config: the transformer's ``DalleConfig``.
        image_config: the image tokenizer's config (``resolution``, ``grid_size``, ``vocab_size``).
        meta: the bundle's metadata (preset, global_step, data, datasets, skipped, license).
        body: Markdown written by a person to use instead of the generated description; the
            header is still generated (unless ``body`` has its own ``---`` front matter).
    Returns:
        The card: YAML front matter, then Markdown.
    """
    if body is not None and body.lstrip().startswith("---"):
        return body
    front = "---\n" + yaml.safe_dump(card_header(meta), sort_keys=False) + "---\n\n"
    if body is not None:
        return front + body
    m, v = model_config, image_config
    g = v.grid_size
    lines = [
        f"# dalle text-to-image model ({meta.get('preset', 'custom')} preset)", "",
        f"A DALL·E-style text-to-image model: {_tokenizer_words(v)} turns a "
        f"{v.resolution}x{v.resolution} image into {g}x{g} codes out of {v.vocab_size}, and a decoder-only "
        f"transformer ({m.n_layer} layers, {m.n_head} heads, width {m.n_embd}) models a caption's "
        f"{m.text_len} BPE tokens followed by those codes.", "",
        "## Use", "",
        "```bash",
        "pip install dalle            # or: pip install -e . in a checkout of the project",
        'dalle generate --model . "a red circle above a blue square" -n 4',
        "dalle serve --model .        # a local web page",
        "```", "",
        "```python",
        "from dalle import Dalle",
        'model = Dalle.from_pretrained(".")',
        'images = model.generate(["a red circle above a blue square"], n=4, seed=0)',
        "```", "",
        "## Training", "",
        "| | |", "|---|---|",
        f"| preset | {meta.get('preset', '-')} |",
        f"| steps | {meta.get('global_step', '-')} |",
        f"| data | {meta.get('data', '-')}: {', '.join(meta.get('datasets') or []) or '-'} |",
        f"| skipped samples | {sum((meta.get('skipped') or {}).values())} |",
        f"| non-finite steps | {meta.get('nonfinite_steps', 0)} |", "",
        "## Files", "",
        "`dalle.safetensors` + `dalle.json` (transformer), `vqvae.safetensors` + `vqvae.json` (image tokenizer), "
        "`tokenizer.json` (caption BPE), `bundle.json` (format, tokenizer sha256, the metadata above). "
        "No pickles.", "",
        "## Limitations", "",
        "A small model trained on the data above; it draws what that data shows and little else. "
        "Check its samples before relying on it.", "",
    ]
    return front + "\n".join(lines)
