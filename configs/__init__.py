"""YAML presets: ``tiny`` for tests, ``small`` for the default model, larger ones for GPUs.

Read them with :func:`train.config.load_preset`; this package only ships the files.
"""
from pathlib import Path

PRESET_DIR = Path(__file__).resolve().parent
