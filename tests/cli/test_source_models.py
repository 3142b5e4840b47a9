"""sdm-train: a tiny model learns, resumes exactly, saves loadable folders; bad input is refused."""

import json

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file
from sdm.cli.source_models import train_main
from sdm.pretrained.loading import load_source_model

TINY = ["--resolution", "32", "--channels", "32", "--channel-mult", "1,2", "--layers-per-block", "1",
        "--attention-resolutions", "16", "--batch-size", "4", "--warmup", "2", "--lr", "1e-3",
        "--sample-count", "2", "--sample-steps", "2"]


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    """24 small two-colour images (12x12: the default crop policy resizes them to 32x32)."""
    folder = tmp_path_factory.mktemp("images")
    rng = np.random.default_rng(0)
    for i in range(24):
        image = np.zeros((12, 12, 3), np.uint8)
        image[...] = rng.integers(0, 255, 3)
        image[3:9, 3:9] = rng.integers(0, 255, 3)
        Image.fromarray(image).save(folder / f"{i:02d}.png")
    return folder


def weights(folder):
    return load_file(str(folder / "unet" / "diffusion_pytorch_model.safetensors"))


def test_a_few_steps_lower_the_loss_and_save_both_layouts(images, tmp_path):
    out = tmp_path / "model"
    assert train_main(["--data", str(images), "--out", str(out), "--steps", "6", *TINY]) == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["loss_after"] < summary["loss_before"]
    assert summary["own_layout"] == "ckpt.pt" and (out / "samples.png").is_file() and (out / "MODEL_CARD.md").is_file()
    x = torch.randn(2, 3, 32, 32)
    diffusers_model, own_model = load_source_model(out), load_source_model(out / "ckpt.pt")
    with torch.no_grad():
        assert torch.equal(diffusers_model.unet(x, 10).sample, own_model.unet(x, 10).sample)


def test_resume_equals_an_uninterrupted_run(images, tmp_path):
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    assert train_main(["--data", str(images), "--out", str(straight), "--steps", "4", *TINY]) == 0
    assert train_main(["--data", str(images), "--out", str(resumed), "--steps", "2", *TINY]) == 0
    assert train_main(["--data", str(images), "--out", str(resumed), "--steps", "4", "--resume", *TINY]) == 0
    a, b = weights(straight), weights(resumed)
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_a_time_limit_stops_early_and_the_summary_says_so(images, tmp_path):
    out = tmp_path / "model"
    assert train_main(["--data", str(images), "--out", str(out), "--steps", "50", "--time-limit", "1e-6", *TINY]) == 0
    summary = json.loads((out / "training.json").read_text())
    assert summary["steps"] == 1 and summary["time_limit"] == 1e-6
    assert "1 steps (stopped by --time-limit 1e-06 s)" in (out / "MODEL_CARD.md").read_text()


def test_resume_refuses_another_architecture(images, tmp_path, capsys):
    out = tmp_path / "model"
    assert train_main(["--data", str(images), "--out", str(out), "--steps", "1", *TINY]) == 0
    wider = [*TINY]
    wider[wider.index("--channels") + 1] = "64"
    assert train_main(["--data", str(images), "--out", str(out), "--steps", "2", "--resume", *wider]) == 2
    assert "another architecture (block_out_channels" in capsys.readouterr().err


def test_prepare_swaps_the_activation_of_a_trained_model_and_keeps_its_weights(images, tmp_path):
    source = tmp_path / "source"
    assert train_main(["--data", str(images), "--out", str(source), "--steps", "2", *TINY]) == 0
    prepared = tmp_path / "prepared"
    assert train_main(["--data", str(images), "--out", str(prepared), "--init", str(source), "--activation", "relu",
                       "--steps", "1", "--lr", "1e-9", "--warmup", "0", "--ema", "0", "--sample-count", "1",
                       "--sample-steps", "1"]) == 0
    summary = json.loads((prepared / "training.json").read_text())
    assert summary["init_activation"] == "silu" and summary["config"]["act_fn"] == "relu"
    assert "Prepared from" in (prepared / "MODEL_CARD.md").read_text()
    before, after = weights(source), weights(prepared)
    assert before.keys() == after.keys()
    assert all(torch.allclose(before[k], after[k], atol=1e-6) for k in before)  # lr 1e-9: the source's weights
