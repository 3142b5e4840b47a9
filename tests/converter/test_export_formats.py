"""ONNX export verified by onnxruntime, NIR refusal naming its blockers, and export error paths."""

import json

import onnx
import pytest
import torch

from sdm.converter.convert import convert
from sdm.core.atomic import atomic_folder
from sdm.converter.export import save_converted
from sdm.converter.export_cli import main as export_main
from sdm.converter.nir_export import nir_blockers
from sdm.converter.onnx_export import ExportError, export_onnx
from sdm.converter.onnx_parity import TIE_TOLERANCE, pinned_run
from sdm.converter.policy import ConversionPolicy


@pytest.fixture(scope="module")
def snn_folder(tmp_path_factory, tiny_source, tiny_record):
    folder = tmp_path_factory.mktemp("export") / "snn"
    with atomic_folder(folder) as staging:
        save_converted(convert(tiny_source, tiny_record, ConversionPolicy(timesteps=2)), tiny_record, staging)
    return folder


def test_onnx_export_matches_pytorch_with_dynamic_batch(snn_folder, tmp_path, tiny_source):
    tiny_source.unet.save_pretrained(tmp_path / "ann")
    out = tmp_path / "snn.onnx"
    assert export_main(["onnx", "--snn", str(snn_folder), "--out", str(out), "--ann", str(tmp_path / "ann")]) == 0
    report = json.loads(out.with_suffix(".json").read_text())
    assert report["snn"]["max_relative_difference"] < 1e-4 and report["ann"]["max_relative_difference"] < 1e-4
    assert {c["batch"] for c in report["snn"]["parity"]} == {1, 3}
    assert report["snn"]["worst_tie_distance"] <= report["snn"]["tie_tolerance"]
    graph = onnx.load(str(out)).graph
    assert [i.name for i in graph.input] == ["x", "t"] and graph.output[0].name == "eps"
    assert [o.name for o in graph.output[1:]] == report["snn"]["outputs"][1:]
    assert all(name.startswith("spikes:") for name in report["snn"]["outputs"][1:])
    assert (tmp_path / "snn-ann.onnx").exists()
    assert report["ann"]["source"]["fingerprint"] == report["source_fingerprint"] == tiny_source.describe()["fingerprint"]


def _own_spikes(snn, x, t):
    outputs = []
    handles = [site.register_forward_hook(lambda _m, _i, out: outputs.append(out.clone())) for site in snn.sites().values()]
    with torch.no_grad():
        eps = snn(x, t).sample
    for handle in handles:
        handle.remove()
    return eps, outputs


def test_pinned_parity_accepts_own_spikes_and_catches_a_flip_away_from_a_tie(tiny_source, tiny_record):
    snn = convert(tiny_source, tiny_record, ConversionPolicy(timesteps=3))
    x, t = torch.randn(2, 3, 8, 8, generator=torch.Generator().manual_seed(3)), torch.tensor([100, 600])
    eps, spikes = _own_spikes(snn, x, t)
    pinned, stats = pinned_run(snn, x, t, [s.numpy() for s in spikes])
    assert torch.equal(torch.from_numpy(pinned), eps) and stats["disagreeing_spikes"] == 0
    # flip one neuron's decision at the first step of the first site: far from any tie
    site = next(iter(snn.sites().values()))
    forced = [s.numpy().copy() for s in spikes]
    theta = float(site.neuron.threshold_pos[0])
    forced[0][0, 0, 0, 0] += theta if forced[0][0, 0, 0, 0] <= float(site.output_shift[0]) else -theta
    _, stats = pinned_run(snn, x, t, forced)
    assert stats["disagreeing_spikes"] >= 1 and stats["worst_tie_distance"] > TIE_TOLERANCE


def test_parity_failure_leaves_no_file(tmp_path, monkeypatch):
    import sdm.converter.onnx_export as module

    monkeypatch.setattr(module, "TOLERANCE", -1.0)  # any difference, even zero, now fails
    class Toy(torch.nn.Module):
        def forward(self, x, t):
            return type("Out", (), {"sample": x * 2 + t.float().view(-1, 1, 1, 1) / 1000})()

    model = Toy()
    with pytest.raises(ExportError, match="disagrees"):
        export_onnx(model, tmp_path / "m.onnx", (3, 4, 4))
    assert list(tmp_path.iterdir()) == []


def test_unwritable_target_is_refused(tmp_path, snn_folder, capsys):
    (tmp_path / "dir.onnx").mkdir()
    assert export_main(["onnx", "--snn", str(snn_folder), "--out", str(tmp_path / "dir.onnx")]) == 2
    assert "export target is a folder" in capsys.readouterr().err


def test_not_a_converted_folder_is_refused(tmp_path, capsys):
    assert export_main(["onnx", "--snn", str(tmp_path), "--out", str(tmp_path / "m.onnx")]) == 2
    assert "not a converted model folder" in capsys.readouterr().err
    assert not (tmp_path / "m.onnx").exists()


def test_nir_refusal_names_every_blocker(snn_folder, tmp_path, capsys):
    assert export_main(["nir", "--snn", str(snn_folder), "--out", str(tmp_path / "m.nir")]) == 2
    err = capsys.readouterr().err
    for kind in ("signed IF neuron", "GroupNorm", "softmax attention", "nearest upsampling", "skip concatenation"):
        assert kind in err
    assert not (tmp_path / "m.nir").exists()


def test_nir_blockers_follow_the_policy(tiny_source, tiny_record):
    relu = convert(tiny_source, tiny_record, ConversionPolicy(negative_lobe="relu"))
    assert "signed IF neuron" not in nir_blockers(relu)
    assert len(nir_blockers(relu)["expectation-compensated dendrite"]) == len(relu.sites())
