"""`sdm-export` end to end: ONNX verified by onnxruntime with a dynamic batch, the ANN checked and exported beside it; NIR refused naming its blockers; error paths."""

import json

import onnx
import pytest
from sdm.cli.export import main as export_main
from sdm.converter.convert import convert
from sdm.converter.folder import save_converted
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.core.atomic import atomic_folder


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


def test_nir_refusal_names_every_blocker(snn_folder, tmp_path, capsys):
    assert export_main(["nir", "--snn", str(snn_folder), "--out", str(tmp_path / "m.nir")]) == 2
    err = capsys.readouterr().err
    for kind in ("signed IF neuron", "GroupNorm", "softmax attention", "nearest upsampling", "skip concatenation"):
        assert kind in err
    assert not (tmp_path / "m.nir").exists()
