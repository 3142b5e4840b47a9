"""A converted UNet behaves like its source: equivalences, round trips, diffusers integration."""

import pytest
import torch
from diffusers import DDIMPipeline, DDIMScheduler, UNet2DModel

from sdm.calibration.collect import calibrate_data_free
from sdm.converter.convert import convert
from sdm.core.atomic import atomic_folder
from sdm.converter.export import load_converted, save_converted
from sdm.converter.model import SpikingUNet2DModel
from sdm.converter.operations import SPIKE_DRIVEN, classify_layers, operations_report
from sdm.converter.policy import ConversionPolicy
from sdm.pretrained.loading import load_source_model
from sdm.pretrained.own_layout import OwnLayoutConfig, save_own_layout_checkpoint
from tests.conftest import TINY_CALIBRATION, make_tiny_source


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


def test_every_layer_is_classified_and_convs_after_sites_are_spike_driven(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy())
    kinds = classify_layers(snn)
    linear_layers = {p for p, m in snn.unet.named_modules() if isinstance(m, (torch.nn.Conv2d, torch.nn.Linear))}
    assert set(kinds) == linear_layers
    assert kinds["down_blocks.0.resnets.0.conv1"] == (SPIKE_DRIVEN, "down_blocks.0.resnets.0.norm1")
    report = operations_report(snn)
    assert report["spiking_neurons"]["sites"] == len(snn.sites())


def test_save_and_reload_is_bit_identical(tmp_path, tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3, threshold_scale=0.9))
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(snn, tiny_record, staging)
    again = load_converted(tmp_path / "snn")
    assert again.policy == snn.policy
    x = torch.randn(2, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(snn(x, 10).sample, again(x, 10).sample)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]


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


@pytest.mark.parametrize("policy", [
    ConversionPolicy(negative_lobe="relu"),
    ConversionPolicy(norm="frozen"),
    ConversionPolicy(attention="instant"),
    ConversionPolicy(input_encoding="spikes"),
    ConversionPolicy(input_encoding="spikes", layerwise=True, matching_inputs=4),
    ConversionPolicy(granularity="layer", threshold_method="percentile", percentile=99.0),
])
def test_every_policy_option_converts_and_runs(tiny_source, tiny_record, policy):
    snn = convert(tiny_source, tiny_record, policy)
    with torch.no_grad():
        out = snn(torch.randn(1, 3, 8, 8), 50).sample
    assert out.shape == (1, 3, 8, 8) and torch.isfinite(out).all()


def test_spike_encoded_input_makes_conv_in_spike_driven(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(input_encoding="spikes", timesteps=64, threshold_method="max"))
    assert classify_layers(snn)["conv_in.1"] == (SPIKE_DRIVEN, "conv_in.input")
    assert "spike-driven" in operations_report(snn)["input_encoding"]
    analog = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=64, threshold_method="max"))
    x = tiny_record.inputs[:2]
    t = tiny_record.input_timesteps[:2]
    with torch.no_grad():
        ref = tiny_source.unet(x, t).sample
        assert rel_error(snn(x, t).sample, ref) < 2 * rel_error(analog(x, t).sample, ref) + 0.05


def test_work_constant_over_time_is_computed_once_with_the_same_result(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3))
    x, t = tiny_record.inputs[:2], tiny_record.input_timesteps[:2]
    with torch.no_grad():
        fast = snn(x, t).sample
        snn.unet.conv_in = snn.unet.conv_in.module  # reference path: recompute for every time step
        snn.unet.time_embedding = snn.unet.time_embedding.module
        reference = snn(x, t).sample
    torch.testing.assert_close(fast, reference, rtol=1e-5, atol=1e-6)


def test_loading_refuses_weights_that_do_not_match_the_model(tmp_path, tiny_source, tiny_record):
    from safetensors.torch import load_file, save_file

    from sdm.converter.export import ConvertedModelError

    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2))
    with atomic_folder(tmp_path / "snn") as staging:
        save_converted(snn, None, staging)
    weights = tmp_path / "snn" / "diffusion_pytorch_model.safetensors"
    tensors = load_file(str(weights))
    tensors.pop(next(k for k in tensors if "threshold_pos" in k))
    save_file(tensors, str(weights))
    with pytest.raises(ConvertedModelError, match="do not match"):
        load_converted(tmp_path / "snn")


@pytest.mark.parametrize("head_dim", [None, 8])
def test_written_out_attention_equals_diffusers_attention(head_dim):
    from sdm.converter.layers import SpikingAttention
    from tests.conftest import make_tiny_unet

    attention = make_tiny_unet(attention_head_dim=head_dim).down_blocks[1].attentions[0]
    x = torch.randn(3, 32, 4, 4)
    with torch.no_grad():
        torch.testing.assert_close(SpikingAttention(attention, 1, "instant")(x), attention(x), rtol=1e-5, atol=1e-6)
