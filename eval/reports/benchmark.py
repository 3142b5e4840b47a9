"""Time and memory of the SNN against its ANN, measured side by side (the library of `python eval/bench.py`).

 of the SNN against its ANN, measured side by side.

For each batch size the ANN and the SNN at every T are timed interleaved (ANN, SNN T1, SNN T2,
..., repeated), so machine noise hits all of them alike; medians and spreads are reported with
the ratio SNN / (T x ANN), the dense-simulation floor. Peak memory: CUDA's allocator peak, or on
CPU the peak resident memory of one call in a fresh process above what it held before (VmHWM).
Also times calibration + conversion of the source model at the default calibration size.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch

from ...calibration.collect import calibrate_data_free
from ...calibration.settings import CalibrationSettings
from ...converter.allocator import retain_freed_memory
from ...converter.convert import convert
from ...converter.spiking import site_kernel
from ...converter.spiking.model import SpikingUNet2DModel
from ...converter.spiking.policy import ConversionPolicy
from ...converter.spiking.simulation import SIMULATIONS, check_choice
from ...core.atomic import atomic_folder, ensure_free_target
from ...core.devices import resolve_device, set_tf32, synchronize, tf32_enabled
from ...core.settings import at_least, require
from ...pretrained.loading import load_source_model

ALLOCATORS = ("retain", "default")


def _resident_kib(field: str) -> int | None:
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1])
    except OSError:
        return None
    return None


def _reset_peak() -> bool:
    try:
        Path("/proc/self/clear_refs").write_text("5")
        return True
    except OSError:
        return False


@torch.no_grad()
def measure(model, x: torch.Tensor, device: torch.device) -> tuple[float, float | None]:
    """Seconds of one call, and on CUDA the allocator's peak above what was allocated (MiB)."""
    if device.type == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated()
    start = time.perf_counter()
    model(x, 500)
    if device.type == "cuda":
        torch.cuda.synchronize()
        return time.perf_counter() - start, (torch.cuda.max_memory_allocated() - before) / 2**20
    return time.perf_counter() - start, None


def cpu_peak_mib(ann: str, timesteps: int, batch: int, threads: int, fused: bool = True,
                 simulation: str = "steps") -> float | None:
    """Peak resident memory of one UNet call above the memory held before it, in a fresh process.

    A fresh process has no freed-but-resident heap to reuse, so VmHWM (reset just before the
    call) shows what the call itself needed. timesteps 0 means the ANN.
    """
    command = [sys.executable, "-m", "sdm.eval.reports.benchmark", ann, str(timesteps), str(batch), str(threads), simulation]
    # A fixed mmap threshold: glibc then maps every tensor-sized block on its own and unmaps it
    # when freed, so resident memory follows live tensors instead of the heap's history.
    environment = {**os.environ, "MALLOC_MMAP_THRESHOLD_": "65536", "SDM_FUSED_SITES": "1" if fused else "0"}
    done = subprocess.run(command, capture_output=True, text=True, timeout=900, env=environment)
    try:
        return float(done.stdout.strip().splitlines()[-1])
    except (ValueError, IndexError):
        return None


@torch.no_grad()
def _memory_worker(ann: str, timesteps: int, batch: int, threads: int, simulation: str) -> None:
    torch.set_num_threads(max(threads, 1))
    source = load_source_model(ann)
    model = source.unet if timesteps == 0 else SpikingUNet2DModel.from_ann(source.unet, ConversionPolicy(timesteps=timesteps))
    if timesteps:
        model.set_simulation(simulation)
    x = torch.randn(batch, source.unet.config.in_channels, source.unet.config.sample_size, source.unet.config.sample_size)
    if not _reset_peak():
        return
    before = _resident_kib("VmRSS")
    model(x, 500)
    print((_resident_kib("VmHWM") - before) / 1024)


class Variant(NamedTuple):
    """One timed model: the ANN (timesteps 0) or an SNN, with or without the fused site kernel,
    simulating steps or its closed form."""

    name: str
    model: torch.nn.Module
    timesteps: int
    fused: bool
    simulation: str = "steps"

    def measure(self, x: torch.Tensor, device: torch.device) -> tuple[float, float | None]:
        if self.timesteps:
            self.model.set_simulation(self.simulation)
        if self.fused:
            return measure(self.model, x, device)
        with site_kernel.disabled():
            return measure(self.model, x, device)


def _summary(values: list[float]) -> dict:
    ordered = sorted(values)
    return {"median": statistics.median(ordered), "min": ordered[0], "max": ordered[-1]}


@dataclass(frozen=True)
class BenchSettings:
    """What one benchmark measures; validated when built (before any model loads)."""

    ann: str
    timesteps: tuple[int, ...]
    batch_sizes: tuple[int, ...]
    repeats: int
    threads: int
    device: str
    allocator: str
    tensor_ops: bool
    out: Path
    overwrite: bool
    simulation: str = "steps"
    tf32: bool = False

    def __post_init__(self) -> None:
        require(bool(self.timesteps) and bool(self.batch_sizes) and min(self.timesteps + self.batch_sizes) >= 1
                and self.repeats >= 1, "timesteps, batch sizes and repeats must be non-empty and >= 1")
        at_least("--threads", self.threads, 0)
        require(self.allocator in ALLOCATORS, f"--allocator must be one of {', '.join(ALLOCATORS)}")
        ensure_free_target(self.out, self.overwrite)


def bench(settings: BenchSettings) -> dict:
    device = resolve_device(settings.device)
    timesteps, batches = list(settings.timesteps), list(settings.batch_sizes)
    simulations = SIMULATIONS if check_choice(settings.simulation) == "both" else (settings.simulation,)
    ensure_free_target(settings.out, settings.overwrite)
    set_tf32(settings.tf32)  # off unless asked: the arithmetic the paired comparisons time
    retained = settings.allocator == "retain" and retain_freed_memory()
    if settings.threads:
        torch.set_num_threads(settings.threads)
    source = load_source_model(settings.ann)
    ann = source.unet.to(device)
    start = time.perf_counter()
    record = calibrate_data_free(ann, source.scheduler_config, CalibrationSettings(), source.fingerprint, device)
    synchronize(device)
    calibrated = time.perf_counter()
    snns = {t: convert(source, record, ConversionPolicy(timesteps=t), device) for t in timesteps}
    synchronize(device)
    converted = time.perf_counter()
    variants = [Variant("ann", ann, 0, True)]
    for t in timesteps:
        for simulation in simulations:
            suffix = "" if simulation == "steps" else f" {simulation}"
            variants.append(Variant(f"snn-T{t}{suffix}", snns[t], t, True, simulation))
            if settings.tensor_ops and simulation == "steps":
                variants.append(Variant(f"snn-T{t} tensor ops", snns[t], t, False))
    rows = []
    for batch in batches:
        x = torch.randn(batch, ann.config.in_channels, ann.config.sample_size, ann.config.sample_size, device=device)
        for variant in variants:  # warm-up
            variant.measure(x, device)
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        peaks: dict[str, list[float]] = {v.name: [] for v in variants}
        for _ in range(settings.repeats):
            for variant in variants:
                seconds, peak = variant.measure(x, device)
                times[variant.name].append(seconds)
                if peak is not None:
                    peaks[variant.name].append(peak)
        if device.type == "cpu":
            for variant in variants:
                peak = cpu_peak_mib(settings.ann, variant.timesteps, batch, settings.threads, variant.fused,
                                    variant.simulation)
                peaks[variant.name] = [] if peak is None else [peak]
        ann_median = statistics.median(times["ann"])
        ann_peak = max(peaks["ann"]) if peaks["ann"] else None
        for variant in variants:
            name, t = variant.name, max(variant.timesteps, 1)
            median = statistics.median(times[name])
            peak = max(peaks[name]) if peaks[name] else None
            rows.append({
                "model": name, "timesteps": variant.timesteps or None, "site_kernel": variant.fused and t > 0,
                "simulation": variant.simulation if variant.timesteps else None,
                "batch": batch, "seconds_per_eval": _summary(times[name]), "seconds_per_sample_eval": median / batch,
                "over_ann": median / ann_median, "over_T_x_ann": median / (t * ann_median),
                "peak_mib": peak, "peak_over_ann": (peak / ann_peak) if peak and ann_peak else None,
            })
    result = {
        "device": str(device), "tf32": tf32_enabled(), "threads": torch.get_num_threads(), "repeats": settings.repeats,
        "site_kernel_available": site_kernel.available(), "allocator": "retain" if retained else "default",
        "calibration_seconds": calibrated - start,
        "conversion_seconds_per_T": (converted - calibrated) / len(timesteps),
        "rows": rows,
    }
    with atomic_folder(settings.out, overwrite=settings.overwrite) as staging:
        (staging / "bench.json").write_text(json.dumps(result, indent=2))
        (staging / "bench.md").write_text(markdown(result))
    return result


def markdown(result: dict) -> str:
    lines = [f"# SNN vs ANN speed ({result['device']}, TF32 {'on' if result['tf32'] else 'off'}, {result['threads']} threads, "
             f"{result['repeats']} repeats)", "",
             f"Calibration (default size) {result['calibration_seconds']:.1f} s; conversion "
             f"{result['conversion_seconds_per_T']:.1f} s per T. Fused site kernel: "
             f"{'compiled and used' if result['site_kernel_available'] else 'not available (tensor ops)'}; "
             f"allocator: {result['allocator']}.", "",
             "| model | batch | s / eval (median) | min–max | SNN/ANN | SNN/(T·ANN) | peak MiB | peak / ANN |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for r in result["rows"]:
        s = r["seconds_per_eval"]
        peak = "—" if r["peak_mib"] is None else f"{r['peak_mib']:.0f}"
        ratio = "—" if r["peak_over_ann"] is None else f"{r['peak_over_ann']:.2f}"
        lines.append(f"| {r['model']} | {r['batch']} | {s['median']:.3f} | {s['min']:.3f}–{s['max']:.3f} | "
                     f"{r['over_ann']:.2f} | {r['over_T_x_ann']:.2f} | {peak} | {ratio} |")
    return "\n".join(lines) + "\n"



if __name__ == "__main__":  # the fresh process of `cpu_peak_mib`, nothing else
    _memory_worker(sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), int(sys.argv[4]), sys.argv[5])
