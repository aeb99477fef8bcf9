"""DALL·E-style text-to-image generation with torch alone.

``from dalle import Dalle``: ``Dalle.from_pretrained(path)`` then ``.generate(...)`` / ``.edit(...)``.
"""
from dalle.api import Dalle
from dalle.options import SamplingOptions
from dalle.pipeline import Generation

__all__ = ["Dalle", "SamplingOptions", "Generation"]
