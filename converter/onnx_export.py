"""Export a converted SNN (or its source ANN) to ONNX and prove the file computes the same thing.

The SNN is exported with its T time steps unrolled: inputs `x` (N x C x H x W, dynamic N) and
`t` (N diffusion timesteps), output the predicted noise. The file is written to a temporary
name, checked with `onnx.checker`, run with onnxruntime against PyTorch on random inputs at
several timesteps and batch sizes, and moved to the target path only if the largest difference
is within tolerance (relative to the output's scale); otherwise the export fails loudly and
nothing is left at the target.
"""

from __future__ import annotations

import os
import tempfile
import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from sdm_errors import SdmError

OPSET = 17
TOLERANCE = 1e-4  # max |onnxruntime - pytorch| / max |pytorch|
EXAMPLE_BATCH = 7  # traced with a batch unlikely to equal any constant (T, channels), so N stays dynamic


class ExportError(SdmError):
    """An export could not be written or did not reproduce the PyTorch model."""


class _EpsOnly(nn.Module):
    """(x, t) -> predicted noise, the signature the ONNX graph exposes."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return self.model(x, t).sample


def _inputs(batch: int, shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    return x, t


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | Path, sample_shape: tuple[int, int, int],
                check_batches: tuple[int, ...] = (1, 3), seed: int = 0) -> dict:
    """Write `model` to `path` as ONNX after verifying it with onnxruntime; return the parity report."""
    import onnx
    import onnxruntime

    target = Path(path)
    if target.exists() and target.is_dir():
        raise ExportError(f"export target is a folder: {target}")
    try:
        target.parent.mkdir(parents=True, exist_ok=True)
        handle, staging_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent)
        os.close(handle)
    except OSError as exc:
        raise ExportError(f"cannot write {target}: {exc.strerror or exc}") from None
    staging = Path(staging_name)
    wrapped = _EpsOnly(model.eval()).eval()
    try:
        example = _inputs(EXAMPLE_BATCH, sample_shape, seed)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            torch.onnx.export(
                wrapped, example, str(staging), input_names=["x", "t"], output_names=["eps"],
                dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"}},
                opset_version=OPSET, dynamo=False,
            )
        onnx.checker.check_model(onnx.load(str(staging)))
        session = onnxruntime.InferenceSession(str(staging), providers=["CPUExecutionProvider"])
        checks, torch_seconds, ort_seconds = [], 0.0, 0.0
        for index, batch in enumerate(check_batches):
            x, t = _inputs(batch, sample_shape, seed + 1 + index)
            start = time.perf_counter()
            reference = wrapped(x, t).numpy()
            torch_seconds += time.perf_counter() - start
            start = time.perf_counter()
            got = session.run(None, {"x": x.numpy(), "t": t.numpy()})[0]
            ort_seconds += time.perf_counter() - start
            difference = float(np.abs(got - reference).max())
            scale = float(np.abs(reference).max())
            checks.append({"batch": batch, "timesteps": t.tolist(), "max_abs_diff": difference,
                           "relative_to_output_scale": difference / max(scale, 1e-12)})
        worst = max(c["relative_to_output_scale"] for c in checks)
        if worst > TOLERANCE:
            raise ExportError(f"onnxruntime disagrees with PyTorch: max difference {worst:.2e} of the output "
                              f"scale (tolerance {TOLERANCE:.0e}); nothing written to {target}")
        os.replace(staging, target)
    except ExportError:
        raise
    except Exception as exc:  # the exporter and checker raise many types; name the cause in one line
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        staging.unlink(missing_ok=True)
    return {
        "path": str(target),
        "opset": OPSET,
        "bytes": target.stat().st_size,
        "parity": checks,
        "max_relative_difference": worst,
        "tolerance": TOLERANCE,
        "seconds_per_eval": {"pytorch": torch_seconds / len(check_batches), "onnxruntime": ort_seconds / len(check_batches)},
    }
