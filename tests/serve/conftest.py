"""A tiny real model bundle on disk and the served model around it."""
from __future__ import annotations

import pytest

from tests.bundles import save_tiny_bundle


@pytest.fixture(scope="session")
def tiny_bundle_dir(tmp_path_factory):
    return save_tiny_bundle(tmp_path_factory.mktemp("serve-model"))


@pytest.fixture(scope="session")
def served_model(tiny_bundle_dir):
    from serve.model import ServedModel
    return ServedModel(tiny_bundle_dir, device="cpu")
