"""`sdm-convert`: checkpoint -> calibration record -> spiking UNet folder -> fidelity summary."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

import numpy as np
import torch

from sdm.calibration.collect import CalibrationSettings, calibrate_data_free, calibrate_from_data
from sdm.calibration.record import CalibrationRecord
from sdm.converter.allocator import retain_freed_memory
from sdm.converter.convert import convert
from sdm.converter.equivalence import ProbeRecorder, equivalence_section, probe_calls
from sdm.converter.export import save_converted
from sdm.converter.mapping import check_convertible
from sdm.converter.operations import operations_report
from sdm.converter.simulation import check_policy
from sdm.converter.policy import (
    ATTENTION_MODES,
    GRANULARITIES,
    INPUT_ENCODINGS,
    NEGATIVE_LOBES,
    NEURONS,
    NORM_MODES,
    SPIKING_LEVELS,
    THRESHOLD_METHODS,
    ConversionPolicy,
)
from sdm.eval.images import psnr, save_grid_rows, to_uint8
from sdm.eval.sampling import SAMPLERS, as_eps_function, initial_noise, run_sampler
from sdm.pretrained.loading import load_source_model
from sdm.pretrained.zoo import DEFAULT_MODEL
from sdm.core.atomic import atomic_folder, ensure_free_target
from sdm.core.devices import resolve_device
from sdm.core.errors import SdmError, run_reporting_errors


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdm-convert",
        description="Convert a pretrained diffusion UNet into a spiking UNet and measure it against the source.",
    )
    parser.add_argument("--checkpoint", default=DEFAULT_MODEL,
                        help="source model: an embedded model name, a diffusers folder, a .safetensors file with a "
                             f"JSON config beside it, or an own-layout DDPM ckpt.pt (default: {DEFAULT_MODEL})")
    parser.add_argument("--timesteps", "-T", type=int, default=4, help="SNN time steps per UNet evaluation (default 4)")
    parser.add_argument("--out", type=Path, default=None, help="output folder (default runs/<model>-T<T>)")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--device", default="cpu", help="torch device, e.g. cpu or cuda:0 (default cpu)")
    parser.add_argument("--seed", type=int, default=0, help="seed of calibration and evaluation noise (default 0)")

    calib = parser.add_argument_group("calibration")
    calib.add_argument("--record", type=Path, default=None,
                       help="reuse the calibration record in this folder instead of running the ANN again")
    calib.add_argument("--calib-samples", type=int, default=8, help="DDIM trajectories of the ANN (default 8)")
    calib.add_argument("--calib-steps", type=int, default=10, help="DDIM steps per trajectory (default 10)")
    calib.add_argument("--calib-batch-size", type=int, default=8, help="batch size of calibration (default 8)")
    calib.add_argument("--calib-data", type=Path, default=None,
                       help="calibrate on real images (folder or zip) noised by q(x_t | x_0) instead of data-free "
                            "DDIM trajectories; --calib-samples images at --calib-steps timesteps each")
    calib.add_argument("--calib-split", default=None, help="only images under this path component (e.g. train)")

    thresholds = parser.add_argument_group("thresholds")
    thresholds.add_argument("--threshold-method", choices=THRESHOLD_METHODS, default="mse",
                            help="max, percentile, or mse (optimal clip for a T-step neuron; default)")
    thresholds.add_argument("--percentile", type=float, default=99.9, help="percentile for --threshold-method percentile")
    thresholds.add_argument("--granularity", choices=GRANULARITIES, default="channel",
                            help="one threshold per channel (default) or per layer")
    thresholds.add_argument("--no-bias-correction", action="store_true",
                            help="do not add back the mean quantisation error as a constant current")
    thresholds.add_argument("--layerwise", action="store_true",
                            help="fit each site's thresholds on the SNN's own inputs against the ANN, in execution "
                                 "order (layer-by-layer matching; off by default, see README)")
    thresholds.add_argument("--matching-inputs", type=int, default=16,
                            help="calibration inputs used by layer-by-layer matching (default 16)")
    thresholds.add_argument("--threshold-scale", type=float, default=1.0,
                            help="threshold guidance: global factor on all thresholds at sampling time (default 1.0)")

    neurons = parser.add_argument_group("neurons")
    neurons.add_argument("--neuron", choices=NEURONS, default="exact",
                         help="exact: graded-spike ON/OFF neurons whose count equals the quantised twin's (default); "
                              "single-spike: at most one spike per step (earlier versions)")
    neurons.add_argument("--max-payload", type=int, default=None,
                         help="exact neurons: at most this many spikes per step and side (default T: exact)")
    neurons.add_argument("--negative-lobe", choices=NEGATIVE_LOBES, default="signed",
                         help="signed: +1/-1 spikes follow SiLU exactly (default); relu: plain IF, ReLU proxy")
    neurons.add_argument("--norm", choices=NORM_MODES, default="running",
                         help="GroupNorm on the running mean of the input (default) or frozen from calibration")
    neurons.add_argument("--attention", choices=ATTENTION_MODES, default="running",
                         help="softmax attention on the running mean (default) or on each time step")
    neurons.add_argument("--input-encoding", choices=INPUT_ENCODINGS, default="analog",
                         help="analog: conv_in(x) injected as a current (default); spikes: x encoded by signed IF neurons")
    neurons.add_argument("--spiking", default=ConversionPolicy.spiking,  # checked by the policy: a one-line error
                         help=f"{' | '.join(SPIKING_LEVELS)}: how much is spike-driven: hybrid (ResNet convs; residual stream and attention analog), "
                              "residual (also shortcut / down / up convs and q/k/v), full (also attention's products "
                              f"and output projection); default {ConversionPolicy.spiking}, see README")
    neurons.add_argument("--membrane-init", type=float, default=0.5,
                         help="initial membrane potential as a fraction of the threshold (default 0.5)")

    evaluation = parser.add_argument_group("fidelity check")
    evaluation.add_argument("--eval-samples", type=int, default=8,
                            help="images sampled by ANN and SNN from the same noise (0 skips; default 8)")
    evaluation.add_argument("--eval-steps", type=int, default=20, help="sampler steps (default 20)")
    evaluation.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="diffusers sampler (default ddim, eta 0)")
    evaluation.add_argument("--simulation", default="steps",
                            help="steps (default), closed-form (the quantised twin, ANN cost) or both (and their "
                                 "agreement in summary.json)")
    return parser


def policy_from_args(args: argparse.Namespace) -> ConversionPolicy:
    return ConversionPolicy(
        timesteps=args.timesteps,
        neuron=args.neuron,
        max_payload=args.max_payload,
        negative_lobe=args.negative_lobe,
        norm=args.norm,
        attention=args.attention,
        input_encoding=args.input_encoding,
        membrane_init=args.membrane_init,
        threshold_method=args.threshold_method,
        percentile=args.percentile,
        granularity=args.granularity,
        bias_correction=not args.no_bias_correction,
        layerwise=args.layerwise,
        matching_inputs=args.matching_inputs,
        threshold_scale=args.threshold_scale,
        spiking=args.spiking,
    )



def calibration_images(args: argparse.Namespace, source) -> torch.Tensor:
    """Real images in [-1, 1], NCHW, at the model's resolution, seeded subset of --calib-samples."""
    from sdm.eval.image_data import ImageSource

    size = source.unet.config.sample_size
    images = ImageSource(args.calib_data, split=args.calib_split, limit=args.calib_samples, resolution=size).load()
    return torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1.0


def run(args: argparse.Namespace) -> dict:
    policy = policy_from_args(args)
    device = resolve_device(args.device)
    if args.eval_samples < 0:
        raise SdmError(f"--eval-samples must be >= 0, got {args.eval_samples}")
    check_policy(args.simulation, policy.attention)
    source = load_source_model(args.checkpoint)
    out = args.out or Path("runs") / f"{Path(str(args.checkpoint)).name}-T{policy.timesteps}"
    check_convertible(source.unet, policy)
    ensure_free_target(out, args.overwrite)
    images = calibration_images(args, source) if args.calib_data is not None and args.record is None else None
    fingerprint = source.describe()["fingerprint"]
    print(f"source: {source.origin} ({source.format}, weights: {source.weights})", file=sys.stderr)
    source.unet.to(device)

    started = time.perf_counter()
    if args.record is not None:
        record = CalibrationRecord.load(args.record)
        record.check_source(fingerprint)
    else:
        settings = CalibrationSettings(num_samples=args.calib_samples, steps=args.calib_steps, seed=args.seed,
                                       batch_size=args.calib_batch_size)
        if images is not None:
            record = calibrate_from_data(source.unet, source.scheduler_config, images, settings, fingerprint, device)
        else:
            record = calibrate_data_free(source.unet, source.scheduler_config, settings, fingerprint, device)
    calibrated = time.perf_counter()
    snn = convert(source, record, policy, device)
    converted = time.perf_counter()

    summary = {
        "source": source.describe(),
        "policy": policy.to_dict(),
        "time_seconds": {"calibration": round(calibrated - started, 2), "conversion": round(converted - calibrated, 2)},
    }
    with atomic_folder(out, overwrite=args.overwrite) as staging:
        save_converted(snn, record, staging)
        (staging / "operations.json").write_text(json.dumps(operations_report(snn), indent=2))
        if args.eval_samples > 0:
            summary["fidelity"] = fidelity_check(source, snn, args, staging, device)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["out"] = str(out)
    return summary


def fidelity_check(source, snn, args: argparse.Namespace, folder: Path, device: torch.device) -> dict:
    """ANN and SNN sample from the same noises; PSNR of the pair, eps error, a grid to look at;
    with --simulation both also the closed form and the equivalence section."""
    shape = (source.unet.config.in_channels, source.unet.config.sample_size, source.unet.config.sample_size)
    noise = initial_noise(args.eval_samples, shape, args.seed)
    common = dict(sampler=args.sampler, scheduler_config=source.scheduler_config, steps=args.eval_steps,
                  seed=args.seed, batch_size=args.eval_samples, device=device)
    ann = as_eps_function(source.unet)
    ann_run = run_sampler(ann, noise, desc="ANN sampling", **common)
    closed_only = args.simulation == "closed-form"
    probe = ProbeRecorder(as_eps_function(snn), probe_calls(args.eval_steps)) if args.simulation == "both" else None
    snn.set_simulation("closed-form" if closed_only else "steps")
    snn.set_monitor(not closed_only)
    snn_run = run_sampler(probe or as_eps_function(snn), noise, reference=ann, desc="SNN sampling", **common)
    neurons = snn.neurons().values()
    spike_rate = None if closed_only else sum(n.spike_count for n in neurons) / max(sum(n.neuron_steps for n in neurons), 1)
    snn.set_monitor(False)
    snn.set_simulation("steps")
    ann_images, snn_images = to_uint8(ann_run.samples), to_uint8(snn_run.samples)
    save_grid_rows([ann_images, snn_images], folder / "grid.png", labels=["ANN", f"SNN T={snn.timesteps}"])
    scores = psnr(ann_images, snn_images)
    result = {
        "num_samples": args.eval_samples,
        "sampler": args.sampler,
        "steps": args.eval_steps,
        "simulation": args.simulation,
        "psnr_db": float(np.mean(np.minimum(scores, 100.0))),
        "eps_rel_l2": float(np.mean(snn_run.eps_rel_l2)),
        "eps_cosine": float(np.mean(snn_run.eps_cosine)),
        "spike_rate": spike_rate,
        "seconds_per_unet_eval": {
            "ann": ann_run.unet_seconds / ann_run.unet_calls,
            "snn": snn_run.unet_seconds / snn_run.unet_calls,
        },
    }
    if probe is not None:
        snn.set_simulation("closed-form")
        closed_run = run_sampler(as_eps_function(snn), noise, reference=ann, desc="SNN sampling (closed form)", **common)
        snn.set_simulation("steps")
        closed_eval = closed_run.unet_seconds / closed_run.unet_calls
        result["closed_form"] = {
            "psnr_db": float(np.mean(np.minimum(psnr(ann_images, to_uint8(closed_run.samples)), 100.0))),
            "eps_rel_l2": float(np.mean(closed_run.eps_rel_l2)),
        }
        result["equivalence"] = equivalence_section(snn, probe.inputs, closed_eval / result["seconds_per_unet_eval"]["snn"])
    return result


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    summary, code = run_reporting_errors("sdm-convert", lambda: run(args))
    if code:
        return code
    print(f"wrote {summary['out']}")
    fidelity = summary.get("fidelity")
    if fidelity:
        times = fidelity["seconds_per_unet_eval"]
        print(
            f"fidelity (T={summary['policy']['timesteps']}, {fidelity['num_samples']} samples, {fidelity['sampler']} "
            f"{fidelity['steps']} steps): PSNR SNN vs ANN {fidelity['psnr_db']:.2f} dB, eps rel. L2 "
            f"{fidelity['eps_rel_l2']:.4f}, "
            + ("" if fidelity["spike_rate"] is None else f"spike rate {fidelity['spike_rate']:.3f}, ")
            + f"SNN/ANN time per eval {times['snn'] / times['ann']:.1f}x ({fidelity['simulation']})"
        )
        if "equivalence" in fidelity:
            eq = fidelity["equivalence"]
            print(f"equivalence: counts differ {eq['count_differs_fraction']:.2e} (ties "
                  f"{eq['count_differs_ties_fraction']:.2e}), largest eps rel. difference "
                  f"{eq['largest_eps_relative_difference']:.2e}, closed-form/steps time {eq['closed_form_over_steps_time']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
