"""Shared test fixtures."""

from __future__ import annotations

import os

import pytest
import torch
from hypothesis import settings

# CI (CI=true) replays the same examples every run; locally hypothesis explores new ones.
settings.register_profile("ci", derandomize=True, deadline=None)
if os.environ.get("CI"):
    settings.load_profile("ci")

# Tests use tiny models, for which extra threads cost more than they give (and CI has 2 cores).
torch.set_num_threads(1)


@pytest.fixture(autouse=True)
def _isolated_data_dir(tmp_path_factory, monkeypatch):
    # MNIST-1D caches generated data; keep tests off the user's cache but share it within a run.
    monkeypatch.setenv("LANDSCAPE_DATA", str(tmp_path_factory.getbasetemp() / "data"))


@pytest.fixture
def f64():
    """Run a test in float64 (exact references)."""
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    yield
    torch.set_default_dtype(old)
