"""ONNX export: a failed parity check leaves no file."""

import pytest
import torch
from sdm.converter.export.onnx_export import ExportError, export_onnx


def test_parity_failure_leaves_no_file(tmp_path, monkeypatch):
    import sdm.converter.export.onnx_export as module

    monkeypatch.setattr(module, "TOLERANCE", -1.0)  # any difference, even zero, now fails
    class Toy(torch.nn.Module):
        def forward(self, x, t):
            return type("Out", (), {"sample": x * 2 + t.float().view(-1, 1, 1, 1) / 1000})()

    model = Toy()
    with pytest.raises(ExportError, match="disagrees"):
        export_onnx(model, tmp_path / "m.onnx", (3, 4, 4))
    assert list(tmp_path.iterdir()) == []
