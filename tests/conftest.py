"""Shared tiny models for the whole suite: small enough that every test runs in seconds on CPU."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from diffusers import UNet2DModel

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"

from sdm.calibration.collect import calibrate_data_free
from sdm.calibration.settings import CalibrationSettings
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


def save_ann_and_snn(root: Path, source: SourceModel, record, timesteps: int) -> Path:
    """`root`/ann (the source as a diffusers folder) and `root`/snn (its conversion at T, with the
    record): the pair the fine-tuning commands take."""
    from sdm.converter.convert import convert
    from sdm.converter.folder import save_converted
    from sdm.converter.spiking.policy import ConversionPolicy
    from sdm.core.atomic import atomic_folder

    source.unet.save_pretrained(root / "ann")
    with atomic_folder(root / "snn") as staging:
        save_converted(convert(source, record, ConversionPolicy(timesteps=timesteps)), record, staging)
    return root


def assert_refused(capsys, code: int, prog: str, expected: str) -> None:
    """Exit code 2 and one line `prog: error: ...` naming `expected` on stderr (progress bars aside)."""
    assert code == 2
    err = [line for line in capsys.readouterr().err.splitlines()
           if line.strip() and "it/s]" not in line and "s/it]" not in line and "%|" not in line]
    assert len(err) == 1 and err[0].startswith(f"{prog}: error:"), err
    assert expected in err[0], err[0]


def refused_by(main, prog: str, capsys, argv: list[str], tmp_path: Path, expected: str, out_name: str = "out") -> None:
    """`main(argv + --out tmp/<out_name>)` refuses in one line and writes nothing, staging included."""
    out = tmp_path / out_name
    assert_refused(capsys, main([*argv, "--out", str(out)]), prog, expected)
    assert not out.exists() and not [p for p in tmp_path.iterdir() if p.name.startswith(f".{out_name}")]


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


class ConvertedModelTester:
    """What every converted model must do, as diffusers' ModelTesterMixin checks its models:
    output shape, save/load round trip, determinism, device and dtype. A test class sets
    `policy` (and may override `make_model`) and inherits the checks."""

    policy = None  # a ConversionPolicy

    def make_model(self, source, record):
        from sdm.converter.convert import convert

        return convert(source, record, self.policy)

    @pytest.fixture
    def model(self, tiny_source, tiny_record):
        return self.make_model(tiny_source, tiny_record)

    @staticmethod
    def inputs(model) -> tuple[torch.Tensor, torch.Tensor]:
        config = model.config
        x = torch.randn((3, config.in_channels, config.sample_size, config.sample_size),
                        generator=torch.Generator().manual_seed(0))
        return x, torch.tensor([10, 400, 900])

    def test_output_has_the_input_shape(self, model):
        x, t = self.inputs(model)
        out = model(x, t).sample
        assert out.shape == (x.shape[0], model.config.out_channels, *x.shape[2:]) and torch.isfinite(out).all()
        assert model(x, t, return_dict=False)[0].shape == out.shape

    def test_save_and_load_round_trip_is_bit_identical(self, model, tmp_path):
        from sdm.converter.folder import load_converted, save_converted

        save_converted(model, None, tmp_path)
        again = load_converted(tmp_path)
        x, t = self.inputs(model)
        assert torch.equal(again(x, t).sample, model(x, t).sample)
        assert again.policy == model.policy
        for key in ("policy", "provenance", "tsm", "sample_size", "in_channels", "out_channels"):
            assert again.config[key] == model.config[key], key

    def test_calls_are_deterministic_and_do_not_leak_state(self, model):
        x, t = self.inputs(model)
        first = model(x, t).sample
        assert torch.equal(model(x, t).sample, first)
        assert torch.equal(model(x[:1], t[:1]).sample, first[:1])

    def test_parameters_and_buffers_follow_device_and_dtype(self, model):
        x, t = self.inputs(model)
        tensors = list(model.parameters()) + list(model.buffers())
        assert {v.device.type for v in tensors} == {"cpu"} and {v.dtype for v in tensors} == {torch.float32}
        double = model.to(torch.float64)
        assert {v.dtype for v in list(double.parameters()) + list(double.buffers())} == {torch.float64}
        assert double(x.double(), t).sample.dtype == torch.float64


# Inputs of the tiny model (3 x 8 x 8) at four diffusion timesteps, for comparing a model's two simulations.
TWIN_INPUTS = torch.randn(4, 3, 8, 8, generator=torch.Generator().manual_seed(3))
TWIN_TIMESTEPS = torch.tensor([900, 600, 300, 20])


def steps_and_twin(snn, x: torch.Tensor = TWIN_INPUTS, t: torch.Tensor = TWIN_TIMESTEPS) -> tuple[torch.Tensor, torch.Tensor]:
    """The step simulation and the closed form of the same model, in float64 (ties far below any threshold)."""
    snn = snn.double()
    with torch.no_grad():
        snn.set_simulation("steps")
        steps = snn(x.double(), t).sample
        snn.set_simulation("closed-form")
        twin = snn(x.double(), t).sample
        snn.set_simulation("steps")
    snn.float()
    return steps, twin
