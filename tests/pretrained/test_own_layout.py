"""Own-layout DDPM checkpoints <-> diffusers, checked against an independent reference network."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel
from own_layout_reference import OwnLayoutUNet
from sdm.core.errors import SdmError
from sdm.pretrained.own_layout import (TIME_TABLE_KEY, OwnLayoutConfig, OwnLayoutError, diffusers_to_own_state_dict,
                                       infer_own_layout_config, load_own_layout_checkpoint, own_to_diffusers_state_dict,
                                       save_own_layout_checkpoint)

TINY = {"ch": 32, "ch_mult": [1, 2], "attn": [1], "num_res_blocks": 1}
TIMESTEPS = [0, 1, 37, 500, 999]


def make_reference(seed: int, ch: int = 32, ch_mult=(1, 2), attn=(1,), num_res_blocks: int = 1) -> OwnLayoutUNet:
    """A reference net whose every weight (norm affines included) is perturbed, so no mapping error hides."""
    torch.manual_seed(seed)
    net = OwnLayoutUNet(1000, ch, list(ch_mult), list(attn), num_res_blocks, dropout=0.1).eval()
    with torch.no_grad():
        for name, param in net.named_parameters():
            if not name.startswith("time_embedding.timembedding.0"):
                param.add_(0.05 * torch.randn_like(param))
    return net


def outputs(model: torch.nn.Module, timesteps: list[int], diffusers: bool) -> list[torch.Tensor]:
    torch.manual_seed(123)
    x = torch.randn(2, 3, 16, 16)
    results = []
    with torch.no_grad():
        for t in timesteps:
            tt = torch.tensor([t, 999 - t])
            results.append(model(x, tt).sample if diffusers else model(x, tt))
    return results


def assert_one_line(exc: pytest.ExceptionInfo) -> None:
    assert isinstance(exc.value, SdmError)
    assert "\n" not in str(exc.value) and str(exc.value)


@pytest.fixture(scope="module")
def reference() -> OwnLayoutUNet:
    return make_reference(0)


@pytest.fixture(scope="module")
def checkpoint(reference: OwnLayoutUNet, tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("own") / "ckpt.pt"
    sd = reference.state_dict()
    torch.save({"net_model": sd, "ema_model": sd, "step": 10, "x_T": torch.randn(2, 3, 16, 16)}, path)
    return path


@pytest.mark.parametrize(
    "ch_mult, attn, num_res_blocks",
    [([1, 2], [1], 1), ([1, 2, 2], [0, 2], 2), ([1], [], 1), ([1, 1, 2], [], 1)],
)
def test_infer_recovers_config(ch_mult: list[int], attn: list[int], num_res_blocks: int) -> None:
    net = make_reference(1, 32, ch_mult, attn, num_res_blocks)
    cfg = infer_own_layout_config(net.state_dict())
    got = (cfg.ch, cfg.ch_mult, cfg.attn, cfg.num_res_blocks, cfg.in_channels)
    assert got == (32, ch_mult, attn, num_res_blocks, 3)


def test_loaded_unet_matches_reference(reference: OwnLayoutUNet, checkpoint: Path) -> None:
    unet, info = load_own_layout_checkpoint(checkpoint)
    assert isinstance(unet, UNet2DModel) and not unet.training
    assert all(p.dtype == torch.float32 for p in unet.parameters())
    config = {**TINY, "dropout": 0.1, "sample_size": 32, "in_channels": 3}
    assert info == {"format": "own-layout", "weights": "ema_model", "config": config}
    for expected, got in zip(outputs(reference, TIMESTEPS, False), outputs(unet, TIMESTEPS, True)):
        assert (expected - got).abs().max().item() < 1e-4


def test_deeper_config_matches_reference(tmp_path: Path) -> None:
    net = make_reference(2, 32, [1, 2, 2], [0, 2], 2)
    torch.save({"net_model": net.state_dict()}, tmp_path / "ckpt.pt")
    unet, info = load_own_layout_checkpoint(tmp_path / "ckpt.pt")
    assert info["weights"] == "net_model"
    for expected, got in zip(outputs(net, [3, 998], False), outputs(unet, [3, 998], True)):
        assert (expected - got).abs().max().item() < 1e-4


def test_state_dict_round_trip_is_exact(reference: OwnLayoutUNet) -> None:
    own = reference.state_dict()
    cfg = infer_own_layout_config(own)
    back = diffusers_to_own_state_dict(own_to_diffusers_state_dict(own, cfg), cfg)
    assert back.keys() == own.keys()
    for key, tensor in own.items():
        assert torch.equal(back[key], tensor), key


def test_save_then_load_gives_identical_outputs(checkpoint: Path, tmp_path: Path) -> None:
    unet, _ = load_own_layout_checkpoint(checkpoint)
    target = tmp_path / "saved.pt"
    save_own_layout_checkpoint(unet, target)
    assert os.listdir(tmp_path) == ["saved.pt"]  # no temp file left behind
    again, info = load_own_layout_checkpoint(target)
    assert info["weights"] == "ema_model"
    for first, second in zip(outputs(unet, TIMESTEPS, True), outputs(again, TIMESTEPS, True)):
        assert torch.equal(first, second)
    saved = torch.load(target, weights_only=True)
    assert saved.keys() == {"net_model", "ema_model"}
    assert saved["net_model"][TIME_TABLE_KEY].shape == (1000, 32)


def test_ema_is_preferred_and_reported(tmp_path: Path) -> None:
    net, ema = make_reference(3), make_reference(4)
    path = tmp_path / "ckpt.pt"
    torch.save({"net_model": net.state_dict(), "ema_model": ema.state_dict(), "optim": {}, "step": 1}, path)
    for prefer_ema, source, expected_net in ((True, "ema_model", ema), (False, "net_model", net)):
        unet, info = load_own_layout_checkpoint(path, prefer_ema=prefer_ema)
        assert info["weights"] == source
        assert (outputs(expected_net, [7], False)[0] - outputs(unet, [7], True)[0]).abs().max().item() < 1e-4

    torch.save(net.state_dict(), path)
    assert load_own_layout_checkpoint(path)[1]["weights"] == "state_dict"


def test_explicit_config_overrides_inference(checkpoint: Path) -> None:
    cfg = OwnLayoutConfig(**TINY, dropout=0.0, sample_size=16)
    unet, info = load_own_layout_checkpoint(checkpoint, config=cfg)
    assert unet.config.sample_size == 16 and info["config"]["sample_size"] == 16

    with pytest.raises(OwnLayoutError, match="does not fit") as exc:
        load_own_layout_checkpoint(checkpoint, config=OwnLayoutConfig(**{**TINY, "attn": []}))
    assert_one_line(exc)


def test_config_json_and_diffusers_round_trips() -> None:
    cfg = OwnLayoutConfig(ch=128, ch_mult=[1, 2, 2, 2], attn=[1], num_res_blocks=2, dropout=0.1, sample_size=32)
    assert OwnLayoutConfig.from_dict(json.loads(json.dumps(cfg.to_dict()))) == cfg
    assert OwnLayoutConfig.from_diffusers_config(cfg.to_diffusers_config()) == cfg
    diffusers = cfg.to_diffusers_config()
    assert diffusers["freq_shift"] == 0 and diffusers["flip_sin_to_cos"] is False
    assert diffusers["down_block_types"] == ["DownBlock2D", "AttnDownBlock2D", "DownBlock2D", "DownBlock2D"]
    assert diffusers["up_block_types"] == ["UpBlock2D", "UpBlock2D", "AttnUpBlock2D", "UpBlock2D"]


@pytest.mark.parametrize(
    "data, message",
    [
        ({**TINY, "extra": 1}, "unknown field"),
        ({"ch": 32, "ch_mult": [1]}, "missing field"),
        ({**TINY, "ch": 48}, "multiple of 32"),
        ({**TINY, "ch_mult": [2, 2]}, "must start with 1"),
        ({**TINY, "attn": [5]}, "out of range"),
        ({**TINY, "dropout": 1.5}, "dropout"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_config_is_rejected(data: object, message: str) -> None:
    with pytest.raises(OwnLayoutError, match=message) as exc:
        OwnLayoutConfig.from_dict(data)
    assert_one_line(exc)


def test_corrupt_and_missing_files_are_rejected(checkpoint: Path, tmp_path: Path) -> None:
    truncated = tmp_path / "truncated.pt"
    truncated.write_bytes(checkpoint.read_bytes()[:1000])
    garbage = tmp_path / "garbage.pt"
    garbage.write_bytes(b"definitely not a checkpoint" * 20)
    empty = tmp_path / "empty.pt"
    empty.write_bytes(b"")
    for path, message in ((truncated, "not a weights-only PyTorch checkpoint"), (garbage, r"not a PyTorch checkpoint \(a text file\)"),
                          (empty, r"not a PyTorch checkpoint \(an empty file\)")):
        with pytest.raises(OwnLayoutError, match=message) as exc:
            load_own_layout_checkpoint(path)
        assert_one_line(exc)
    with pytest.raises(OwnLayoutError, match="not found") as exc:
        load_own_layout_checkpoint(tmp_path / "absent.pt")
    assert_one_line(exc)


class _Payload:
    """Unpickling this would run code (create a folder); a weights-only load must refuse it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (os.makedirs, (str(self.marker),))


def test_pickle_needing_code_is_refused(reference: OwnLayoutUNet, tmp_path: Path) -> None:
    marker = tmp_path / "code-ran"
    path = tmp_path / "evil.pt"
    torch.save({"net_model": reference.state_dict(), "extra": _Payload(marker)}, path)
    with pytest.raises(OwnLayoutError, match="refusing to unpickle code") as exc:
        load_own_layout_checkpoint(path)
    assert_one_line(exc)
    assert not marker.exists()


def _bad_state_dicts(reference: OwnLayoutUNet) -> list[tuple[str, dict, str]]:
    sd = reference.state_dict()
    without_head = {k: v for k, v in sd.items() if not k.startswith("head.")}
    last_block = {k: v for k, v in sd.items() if k.startswith("downblocks.2.")}
    extra_block = {**sd, **{k.replace("downblocks.2.", "downblocks.3.", 1): v for k, v in last_block.items()}}
    concatenated = sd[TIME_TABLE_KEY].view(1000, -1, 2).transpose(1, 2).reshape(1000, -1)
    return [
        ("unknown key", {**sd, "foo.weight": torch.zeros(3)}, "unexpected key foo.weight"),
        ("wrong shape", {**sd, "upblocks.0.block1.2.weight": torch.zeros(64, 64, 3, 3)}, "has shape"),
        ("no head", without_head, "no head.weight"),
        ("bad head", {**sd, "head.weight": torch.zeros(32, 3)}, "head.weight has shape"),
        ("block counts", extra_block, "inconsistent"),
        ("missing tail", {k: v for k, v in sd.items() if not k.startswith("tail.2")}, "missing key tail.2"),
        ("concatenated table", {**sd, TIME_TABLE_KEY: concatenated}, "interleaved"),
        ("non-tensor", {**sd, "tail.2.bias": [0.0, 0.0, 0.0]}, "not a tensor"),
    ]


@pytest.mark.parametrize("case", range(8))
def test_bad_state_dicts_are_rejected(reference: OwnLayoutUNet, tmp_path: Path, case: int) -> None:
    name, sd, message = _bad_state_dicts(reference)[case]
    path = tmp_path / "ckpt.pt"
    torch.save({"ema_model": sd}, path)
    with pytest.raises(OwnLayoutError, match=message) as exc:
        load_own_layout_checkpoint(path)
    assert_one_line(exc)


def test_checkpoint_without_weights_is_rejected(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    cases = (
        ([1, 2, 3], "not an own-layout checkpoint"),
        ({"step": 3}, "no ema_model"),
        ({"ema_model": 3}, "not a state dict"),
    )
    for content, message in cases:
        torch.save(content, path)
        with pytest.raises(OwnLayoutError, match=message) as exc:
            load_own_layout_checkpoint(path)
        assert_one_line(exc)


def test_save_rejects_unexpressible_unet_and_bad_folder(checkpoint: Path, tmp_path: Path) -> None:
    other = UNet2DModel(**{**OwnLayoutConfig(**TINY).to_diffusers_config(), "flip_sin_to_cos": True})
    with pytest.raises(OwnLayoutError, match="flip_sin_to_cos") as exc:
        save_own_layout_checkpoint(other, tmp_path / "x.pt")
    assert_one_line(exc)
    unet, _ = load_own_layout_checkpoint(checkpoint)
    with pytest.raises(OwnLayoutError, match="cannot write") as exc:
        save_own_layout_checkpoint(unet, tmp_path / "missing" / "x.pt")
    assert_one_line(exc)
    assert os.listdir(tmp_path) == []
