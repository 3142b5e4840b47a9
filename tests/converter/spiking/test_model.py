"""The converted model behaves like a diffusers model and like its source: the shared tester over several
policies, convergence to the ANN as T grows, diffusers pipelines, the ANN left untouched."""

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel
from sdm.calibration.collect import calibrate_data_free
from sdm.converter.convert import convert
from sdm.converter.folder import load_converted, save_converted
from sdm.converter.spiking.model import SpikingUNet2DModel
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.converter.spiking.tsm import enable_tsm
from sdm.core.atomic import atomic_folder
from sdm.pretrained.loading import load_source_model
from sdm.pretrained.own_layout import OwnLayoutConfig, save_own_layout_checkpoint

from tests.conftest import TINY_CALIBRATION, ConvertedModelTester, make_tiny_source


class TestDefaultPolicy(ConvertedModelTester):
    policy = ConversionPolicy(timesteps=2)


class TestReluFrozenNormSpikeInput(ConvertedModelTester):
    policy = ConversionPolicy(timesteps=3, negative_lobe="relu", norm="frozen", input_encoding="spikes",
                              threshold_scale=0.9)


class TestTsmModel(ConvertedModelTester):
    policy = ConversionPolicy(timesteps=2)

    def make_model(self, source, record):
        snn = convert(source, record, self.policy)
        enable_tsm(snn)
        for site in snn.sites().values():
            site.tsm.data.mul_(0.9)
        return snn


def test_threshold_scale_lives_in_the_policy(tiny_source, tiny_record):
    """The policy saved and reported always matches the neurons (eval/sweep.py changes the scale)."""
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    snn.set_threshold_scale(1.2)
    assert snn.policy.threshold_scale == 1.2 == snn.config.policy["threshold_scale"]
    assert {n.threshold_scale for n in snn.neurons().values()} == {1.2}


def rel_error(a: torch.Tensor, b: torch.Tensor) -> float:
    return float((a - b).norm() / b.norm())


@torch.no_grad()
def eps_error(source, record, policy) -> float:
    """Error on the first calibration input (same seeded noise, first DDIM timestep): no clipping."""
    x = torch.randn((TINY_CALIBRATION.num_samples, 3, 8, 8), generator=torch.Generator().manual_seed(TINY_CALIBRATION.seed))
    t = record.meta["diffusion_timesteps"][0]
    snn = convert(source, record, policy)
    return rel_error(snn(x, t).sample, source.unet(x, t).sample)


def test_relu_network_converges_to_ann_as_T_grows():
    source = make_tiny_source(act_fn="relu")
    source.unet.conv_act = torch.nn.ReLU()  # UNet2DModel hard-codes SiLU before conv_out
    record = calibrate_data_free(source.unet, source.scheduler_config, TINY_CALIBRATION, source.describe()["fingerprint"])
    policy = ConversionPolicy(negative_lobe="relu", threshold_method="max")
    errors = [eps_error(source, record, policy.replace(timesteps=t)) for t in (2, 8, 32, 128)]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.1 * errors[0]


def test_silu_unet_converges_to_ann_as_T_grows(tiny_source, tiny_record):
    errors = [eps_error(tiny_source, tiny_record, ConversionPolicy(timesteps=t, threshold_method="max")) for t in (2, 8, 32, 128)]
    assert errors == sorted(errors, reverse=True), errors
    assert errors[-1] < 0.1 * errors[0], errors


def test_runs_inside_a_diffusers_ddim_pipeline(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    pipe = DDIMPipeline(unet=snn, scheduler=DDIMScheduler.from_config(tiny_source.scheduler_config))
    pipe.set_progress_bar_config(disable=True)
    images = pipe(batch_size=2, num_inference_steps=2, generator=torch.Generator().manual_seed(0), output_type="np").images
    assert images.shape == (2, 8, 8, 3)
    assert (images >= 0).all() and (images <= 1).all()


def test_own_layout_checkpoint_converts(tmp_path):
    cfg = OwnLayoutConfig(ch=32, ch_mult=[1, 2], attn=[1], num_res_blocks=1, dropout=0.0, sample_size=8)
    torch.manual_seed(0)
    unet = UNet2DModel(**cfg.to_diffusers_config())
    save_own_layout_checkpoint(unet, tmp_path / "ckpt.pt")
    source = load_source_model(tmp_path / "ckpt.pt")
    assert source.format == "own-layout" and source.weights == "ema_model"
    record = calibrate_data_free(source.unet, source.scheduler_config, TINY_CALIBRATION, source.describe()["fingerprint"])
    snn = convert(source, record, ConversionPolicy(timesteps=16))
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(snn, record, staging)
    again = load_converted(tmp_path / "snn")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(snn(x, 5).sample, again(x, 5).sample)
    coarse, fine = (eps_error(source, record, ConversionPolicy(timesteps=t, threshold_method="max")) for t in (2, 64))
    assert fine < 0.2 * coarse, (coarse, fine)


def test_threshold_scale_one_is_identity(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        before = snn(x, 100).sample
        snn.set_threshold_scale(1.0)
        assert torch.equal(before, snn(x, 100).sample)
        snn.set_threshold_scale(1.2)
        assert not torch.equal(before, snn(x, 100).sample)


def test_from_ann_keeps_the_ann_untouched(tiny_source):
    before = {k: v.clone() for k, v in tiny_source.unet.state_dict().items()}
    SpikingUNet2DModel.from_ann(tiny_source.unet, ConversionPolicy())
    after = tiny_source.unet.state_dict()
    assert all(torch.equal(before[k], after[k]) for k in before)


def test_splitting_the_batch_into_passes_does_not_change_outputs(tiny_source, tiny_record):
    # float64: the convolutions' batch-size-dependent rounding can then not flip a spike
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4)).double()
    x = torch.randn(7, 3, 8, 8, generator=torch.Generator().manual_seed(2), dtype=torch.float64)
    t = torch.tensor([10, 50, 100, 200, 400, 700, 999])
    outputs = []
    with torch.no_grad():
        for per_pass in (None, 1, 3, 7):
            snn.set_inputs_per_pass(per_pass)
            outputs.append(snn(x, t).sample)
    for other in outputs[1:]:
        torch.testing.assert_close(other, outputs[0], rtol=0, atol=1e-12)


def test_inputs_per_pass_must_be_positive(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    with pytest.raises(ValueError, match="inputs per pass"):
        snn.set_inputs_per_pass(0)


def test_pass_size_rule_per_device(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=4))
    assert snn._pass_size(torch.empty(10, 3, 32, 32)) == 3  # CPU: ceil(B / T) inputs, ~B rows
    # elsewhere (CUDA; meta stands in): the whole batch up to GPU_PASS_ROWS rows of 32x32, else equal passes
    assert snn._pass_size(torch.empty(1000, 3, 32, 32, device="meta")) == 1000
    assert snn._pass_size(torch.empty(3000, 3, 32, 32, device="meta")) == 1000
    assert snn._pass_size(torch.empty(1000, 3, 64, 64, device="meta")) == 250
    snn.set_inputs_per_pass(7)
    assert snn._pass_size(torch.empty(1000, 3, 32, 32, device="meta")) == 7
