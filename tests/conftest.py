"""Shared tiny models for the whole suite: small enough that every test runs in seconds on CPU."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

from sdm.calibration.collect import CalibrationSettings, calibrate_data_free
from sdm.pretrained.loading import DEFAULT_SCHEDULER_CONFIG, SourceModel

TINY_UNET_CONFIG = dict(
    sample_size=8,
    in_channels=3,
    out_channels=3,
    layers_per_block=1,
    block_out_channels=(16, 32),
    down_block_types=("DownBlock2D", "AttnDownBlock2D"),
    up_block_types=("AttnUpBlock2D", "UpBlock2D"),
    norm_num_groups=8,
    attention_head_dim=None,
)
TINY_CALIBRATION = CalibrationSettings(num_samples=4, steps=3, seed=0, batch_size=4, values_per_channel=32, quantiles=65)


def make_tiny_unet(seed: int = 0, **overrides) -> UNet2DModel:
    """A randomly initialised tiny UNet2DModel with SiLU, GroupNorm and attention."""
    torch.manual_seed(seed)
    unet = UNet2DModel(**{**TINY_UNET_CONFIG, **overrides}).eval()
    # Random init leaves GroupNorm affine at identity; perturb it so every parameter matters.
    with torch.no_grad():
        for module in unet.modules():
            if isinstance(module, torch.nn.GroupNorm):
                module.weight.uniform_(0.5, 1.5)
                module.bias.uniform_(-0.3, 0.3)
    return unet


def make_tiny_source(**overrides) -> SourceModel:
    return SourceModel(unet=make_tiny_unet(**overrides), scheduler_config=dict(DEFAULT_SCHEDULER_CONFIG),
                       origin="tiny", format="test")


@pytest.fixture(scope="session", autouse=True)
def _single_thread():
    """One torch thread: tiny tensors run faster, and timings do not fight other processes."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(previous)


@pytest.fixture(scope="session")
def tiny_source() -> SourceModel:
    return make_tiny_source()


@pytest.fixture(scope="session")
def tiny_record(tiny_source):
    return calibrate_data_free(tiny_source.unet, tiny_source.scheduler_config, TINY_CALIBRATION,
                               tiny_source.describe()["fingerprint"])


@pytest.fixture(scope="session")
def shared_dir() -> Path:
    if not SHARED.is_dir():
        pytest.skip(f"../shared not present at {SHARED}")
    return SHARED
