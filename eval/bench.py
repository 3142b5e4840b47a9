"""`python eval/bench.py`: time and memory of the SNN against its ANN, measured side by side.

For each batch size the ANN and the SNN at every T are timed interleaved (ANN, SNN T1, SNN T2,
..., repeated), so machine noise hits all of them alike; medians and spreads are reported with
the ratio SNN / (T x ANN), the dense-simulation floor. Peak memory: CUDA's allocator peak, or on
CPU the peak resident memory of one call in a fresh process above what it held before (VmHWM).
Also times calibration + conversion of the source model at the default calibration size.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import NamedTuple


import torch

from sdm.calibration.collect import CalibrationSettings, calibrate_data_free
from sdm.converter import site_kernel
from sdm.converter.allocator import retain_freed_memory
from sdm.core.devices import DEVICE_HELP, resolve_device, set_tf32, synchronize, tf32_enabled
from sdm.converter.convert import convert
from sdm.converter.model import SpikingUNet2DModel
from sdm.converter.policy import ConversionPolicy
from sdm.converter.simulation import SIMULATIONS, check_choice
from sdm.pretrained.loading import load_source_model
from sdm.pretrained.zoo import DEFAULT_MODEL
from sdm.core.atomic import atomic_folder, ensure_free_target
from sdm.core.errors import SdmError, run_reporting_errors


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
    command = [sys.executable, __file__, "--memory-worker", ann, str(timesteps), str(batch), str(threads), simulation]
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


def bench(args: argparse.Namespace) -> dict:
    device = resolve_device(args.device)
    timesteps = [int(v) for v in args.timesteps.split(",") if v.strip()]
    batches = [int(v) for v in args.batch_sizes.split(",") if v.strip()]
    if not timesteps or not batches or min(timesteps + batches) < 1 or args.repeats < 1:
        raise SdmError("timesteps, batch sizes and repeats must be non-empty and >= 1")
    simulations = SIMULATIONS if check_choice(args.simulation) == "both" else (args.simulation,)
    ensure_free_target(args.out, args.overwrite)
    retained = args.allocator == "retain" and retain_freed_memory()
    set_tf32(args.tf32)  # off unless asked: the arithmetic the paired comparisons time
    if args.threads:
        torch.set_num_threads(args.threads)
    source = load_source_model(args.ann)
    fingerprint = source.describe()["fingerprint"]
    ann = source.unet.to(device)
    start = time.perf_counter()
    record = calibrate_data_free(ann, source.scheduler_config, CalibrationSettings(), fingerprint, device)
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
            if args.tensor_ops and simulation == "steps":
                variants.append(Variant(f"snn-T{t} tensor ops", snns[t], t, False))
    rows = []
    for batch in batches:
        x = torch.randn(batch, ann.config.in_channels, ann.config.sample_size, ann.config.sample_size, device=device)
        for variant in variants:  # warm-up
            variant.measure(x, device)
        times: dict[str, list[float]] = {v.name: [] for v in variants}
        peaks: dict[str, list[float]] = {v.name: [] for v in variants}
        for _ in range(args.repeats):
            for variant in variants:
                seconds, peak = variant.measure(x, device)
                times[variant.name].append(seconds)
                if peak is not None:
                    peaks[variant.name].append(peak)
        if device.type == "cpu":
            for variant in variants:
                peak = cpu_peak_mib(args.ann, variant.timesteps, batch, args.threads, variant.fused, variant.simulation)
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
        "device": str(device), "tf32": tf32_enabled(), "threads": torch.get_num_threads(), "repeats": args.repeats,
        "site_kernel_available": site_kernel.available(), "allocator": "retain" if retained else "default",
        "calibration_seconds": calibrated - start,
        "conversion_seconds_per_T": (converted - calibrated) / len(timesteps),
        "rows": rows,
    }
    with atomic_folder(args.out, overwrite=args.overwrite) as staging:
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


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["--memory-worker"]:
        _memory_worker(argv[1], int(argv[2]), int(argv[3]), int(argv[4]), argv[5])
        return 0
    p = argparse.ArgumentParser(prog="bench.py", description=__doc__.splitlines()[0])
    p.add_argument("--ann", default=DEFAULT_MODEL)
    p.add_argument("--timesteps", default="1,2,4,8")
    p.add_argument("--batch-sizes", default="1,16")
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--device", default="cpu", help=DEVICE_HELP + " (default cpu)")
    p.add_argument("--tf32", action="store_true", help="let CUDA use TF32 for float32 convolutions (default off)")
    p.add_argument("--allocator", choices=("retain", "default"), default="retain",
                   help="retain: keep freed buffers mapped (converter/allocator.py), as the sampling commands do; "
                        "default: glibc's own thresholds")
    p.add_argument("--tensor-ops", action="store_true",
                   help="also time each SNN with its sites as plain PyTorch ops (the fallback without a C compiler)")
    p.add_argument("--simulation", default="steps",
                   help="steps (default), closed-form (the quantised twin, one pass) or both, timed side by side")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    result, code = run_reporting_errors("bench.py", lambda: bench(args))
    if code:
        return code
    print(markdown(result))
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
