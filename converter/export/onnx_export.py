"""Export a converted SNN (or its source ANN) to ONNX and prove the file computes the same thing.

The SNN is exported with its T time steps unrolled: inputs `x` (N x C x H x W, dynamic N) and
`t` (N diffusion timesteps), outputs the predicted noise `eps` and every spiking site's spikes.
The file is written to a temporary name, checked with `onnx.checker`, run with onnxruntime on
random inputs at several timesteps and batch sizes against PyTorch pinned to the same spikes
(converter/export/onnx_parity.py: free-running outputs of two float runtimes differ wherever a membrane
sits on a threshold), and moved to the target path only if the outputs agree within tolerance
(relative to the output's scale) and every spike decided differently is a threshold tie;
otherwise the export fails loudly and nothing is left at the target.
"""

from __future__ import annotations

import time
import warnings
from pathlib import Path

import numpy as np
import torch
from torch import nn

from ...core.atomic import atomic_file
from ...core.errors import SdmError
from ..spiking.layers import SpikingActivation
from .onnx_parity import TIE_TOLERANCE, pinned_run, sites_in_call_order

OPSET = 17
TOLERANCE = 1e-4  # max |onnxruntime - pytorch| / max |pytorch|
EXAMPLE_BATCH = 7  # traced with a batch unlikely to equal any constant (T, channels), so N stays dynamic


class ExportError(SdmError):
    """An export could not be written or did not reproduce the PyTorch model."""


class _EpsAndSpikes(nn.Module):
    """(x, t) -> (predicted noise, every spiking site's output in call order)."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> tuple[torch.Tensor, ...]:
        collected: list[torch.Tensor] = []
        handles = [m.register_forward_hook(lambda _m, _i, out: collected.append(out))
                   for m in self.model.modules() if isinstance(m, SpikingActivation)]
        try:
            eps = self.model(x, t).sample
        finally:
            for handle in handles:
                handle.remove()
        return (eps, *collected)


def _inputs(batch: int, shape: tuple[int, int, int], seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn((batch, *shape), generator=generator)
    t = torch.randint(0, 1000, (batch,), generator=generator)
    return x, t


def _single_pass(model: nn.Module, batch: int) -> None:
    """Pinned parity needs all of a batch's spikes from one stacked pass, like the traced graph."""
    if hasattr(model, "set_inputs_per_pass"):
        model.set_inputs_per_pass(batch)


@torch.no_grad()
def export_onnx(model: nn.Module, path: str | Path, sample_shape: tuple[int, int, int],
                check_batches: tuple[int, ...] = (1, 3), seed: int = 0) -> dict:
    """Write `model` to `path` as ONNX after verifying it with onnxruntime; return the parity report.

    Outputs: `eps`, and for a spiking model `spikes:<site>` per spiking site ([T*N, C, H, W],
    t-major), which the parity check pins PyTorch to (converter/export/onnx_parity.py).
    """
    import onnx
    import onnxruntime

    target = Path(path)
    if target.exists() and target.is_dir():
        raise ExportError(f"export target is a folder: {target}")
    model = model.eval()
    wrapped = _EpsAndSpikes(model).eval()
    chosen = getattr(model, "inputs_per_pass", None)
    try:
        with atomic_file(target, ExportError, parents=True) as staging:
            example = _inputs(EXAMPLE_BATCH, sample_shape, seed)
            _single_pass(model, EXAMPLE_BATCH)
            site_names = [f"spikes:{site.site}" for site in sites_in_call_order(model, *example)]
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                torch.onnx.export(
                    wrapped, example, str(staging), input_names=["x", "t"], output_names=["eps", *site_names],
                    dynamic_axes={"x": {0: "batch"}, "t": {0: "batch"}, "eps": {0: "batch"},
                                  **{name: {0: "steps_x_batch"} for name in site_names}},
                    opset_version=OPSET, dynamo=False,
                )
            onnx.checker.check_model(onnx.load(str(staging)))
            session = onnxruntime.InferenceSession(str(staging), providers=["CPUExecutionProvider"])
            checks, torch_seconds, ort_seconds = [], 0.0, 0.0
            _single_pass(model, EXAMPLE_BATCH)
            model(*example)  # warm-up, so neither runtime's timing includes first-call setup
            session.run(None, {"x": example[0].numpy(), "t": example[1].numpy()})
            for index, batch in enumerate(check_batches):
                x, t = _inputs(batch, sample_shape, seed + 1 + index)
                _single_pass(model, batch)
                start = time.perf_counter()
                reference = model(x, t).sample.numpy()
                torch_seconds += time.perf_counter() - start
                start = time.perf_counter()
                got, *spikes = session.run(None, {"x": x.numpy(), "t": t.numpy()})
                ort_seconds += time.perf_counter() - start
                pinned, ties = pinned_run(model, x, t, spikes) if spikes else (reference, {})
                scale = max(float(np.abs(reference).max()), 1e-12)
                checks.append({
                    "batch": batch, "timesteps": t.tolist(),
                    "max_abs_diff": float(np.abs(got - pinned).max()),
                    "relative_to_output_scale": float(np.abs(got - pinned).max()) / scale,
                    "free_running_relative_diff": float(np.abs(got - reference).max()) / scale,
                    **ties,
                })
            worst = max(c["relative_to_output_scale"] for c in checks)
            worst_tie = max(c.get("worst_tie_distance", 0.0) for c in checks)
            if worst > TOLERANCE:
                raise ExportError(f"onnxruntime disagrees with PyTorch on the same spikes: max difference {worst:.2e} of the "
                                  f"output scale (tolerance {TOLERANCE:.0e}); nothing written to {target}")
            if worst_tie > TIE_TOLERANCE:
                raise ExportError(f"onnxruntime fires differently from PyTorch away from a threshold tie (membrane "
                                  f"{worst_tie:.2e} thresholds from firing, tolerance {TIE_TOLERANCE:.0e}); "
                                  f"nothing written to {target}")
    except ExportError:
        raise
    except Exception as exc:  # the exporter and checker raise many types; name the cause in one line
        raise ExportError(f"ONNX export failed: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from None
    finally:
        if hasattr(model, "set_inputs_per_pass"):
            model.set_inputs_per_pass(chosen)
    return {
        "path": str(target),
        "opset": OPSET,
        "bytes": target.stat().st_size,
        "outputs": ["eps", *site_names],
        "parity": checks,
        "max_relative_difference": worst,
        "tolerance": TOLERANCE,
        "worst_tie_distance": worst_tie,
        "tie_tolerance": TIE_TOLERANCE,
        "seconds_per_eval": {"pytorch": torch_seconds / len(check_batches), "onnxruntime": ort_seconds / len(check_batches)},
    }
