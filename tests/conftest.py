"""Shared fixtures: a session-wide cache for built-in models, the tiny model loaded once, small images."""

from __future__ import annotations

import os

import numpy as np
import pytest
from PIL import Image

os.environ.setdefault("HF_HUB_OFFLINE", "1")
if os.environ.get("PYTEST_XDIST_WORKER"):
    # Parallel workers share the cores: one thread each (and in the CLI subprocesses they start), else they fight.
    for _threads in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ.setdefault(_threads, "1")
# The tests run the random-weight tiny-sd15 (fast) unless they name a model; the default (demo) is tested
# on its own (tests/test_validate.py), and subprocesses inherit this.
os.environ.setdefault("DIFFDIFF_MODEL", "tiny-sd15")


@pytest.fixture(scope="session", autouse=True)
def diffdiff_cache(tmp_path_factory):
    """Built-ins are built once per test session into a private cache (subprocesses inherit it).

    Under pytest-xdist the workers share one cache beside their own temporary folders: built-ins are built
    atomically, so the first worker to finish one keeps it and the others reuse it."""
    shared = tmp_path_factory.getbasetemp().parent / "diffdiff-cache" if os.environ.get("PYTEST_XDIST_WORKER") else None
    if shared is not None:
        shared.mkdir(exist_ok=True)
    cache = os.environ.get("DIFFDIFF_TEST_CACHE") or str(shared or tmp_path_factory.mktemp("diffdiff-cache"))
    os.environ["DIFFDIFF_CACHE"] = cache
    return cache


@pytest.fixture(scope="session")
def tiny_model(diffdiff_cache):
    from diffdiff_cli.models.load import load_model
    from diffdiff_cli.models.registry import resolve_model

    return load_model(resolve_model("tiny-sd15"), offline=True)


def save_rgb(path, width=64, height=64, seed=0, mode="RGB"):
    """A smooth random colour image (tiny VAEs behave better on smooth content than on white noise)."""
    rs = np.random.RandomState(seed)
    coarse = rs.rand(max(height // 8, 2), max(width // 8, 2), 3)
    image = Image.fromarray((coarse * 255).astype(np.uint8)).resize((width, height), Image.Resampling.BICUBIC)
    if mode != "RGB":
        image = image.convert(mode)
    image.save(path)
    return str(path)


def save_map(path, values: np.ndarray):
    """values in [0, 1], saved as an 8-bit grayscale PNG."""
    Image.fromarray(np.round(np.asarray(values) * 255).astype(np.uint8)).save(path)
    return str(path)


@pytest.fixture
def images(tmp_path):
    """A 64 px photo and its all-white, all-black and left-to-right gradient maps."""
    size = 64
    return {
        "photo": save_rgb(tmp_path / "photo.png", size, size),
        "white": save_map(tmp_path / "white.png", np.ones((size, size))),
        "black": save_map(tmp_path / "black.png", np.zeros((size, size))),
        "gradient": save_map(tmp_path / "gradient.png", np.tile(np.linspace(0, 1, size), (size, 1))),
        "dir": tmp_path,
    }
