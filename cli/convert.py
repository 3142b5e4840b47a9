"""`sdm-convert`: checkpoint -> calibration record -> spiking UNet folder -> fidelity summary."""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass, replace
from pathlib import Path

from ..converter.allocator import retain_freed_memory
from ..converter.spiking.policy import (ATTENTION_MODES, ATTENTION_PROBABILITIES, EMISSIONS, GRANULARITIES,
                                        INPUT_ENCODINGS, NEGATIVE_LOBES, NEURONS, NORM_MODES, SPIKING_LEVELS,
                                        THRESHOLD_METHODS, ConversionPolicy)
from ..core.atomic import ensure_free_target
from ..core.settings import SAMPLERS, SamplingSettings, at_least
from .calibrate import SourceCalibration, add_source_arguments
from .common import add_output_arguments, add_simulation_argument, make_parser, print_equivalence, run_command

PROG = "sdm-convert"


def build_parser() -> argparse.ArgumentParser:
    parser = make_parser(PROG, "Convert a pretrained diffusion UNet into a spiking UNet and measure it against the source.")
    parser.add_argument("--timesteps", "-T", type=int, default=4, help="SNN time steps per UNet evaluation")
    add_output_arguments(parser, "output folder (default runs/<model>-T<T>)", required=False)
    parser.add_argument("--record", type=Path, default=None,
                        help="reuse the calibration record in this folder (from sdm-calibrate or sdm-convert) "
                             "instead of running the ANN again")
    add_source_arguments(parser)

    thresholds = parser.add_argument_group("thresholds")
    thresholds.add_argument("--threshold-method", choices=THRESHOLD_METHODS, default="mse",
                            help="max, percentile, or mse (optimal clip for a T-step neuron)")
    thresholds.add_argument("--percentile", type=float, default=99.9, help="percentile for --threshold-method percentile")
    thresholds.add_argument("--granularity", choices=GRANULARITIES, default="channel",
                            help="one threshold per channel or per layer")
    thresholds.add_argument("--no-bias-correction", action="store_true",
                            help="do not add back the mean quantisation error as a constant current")
    thresholds.add_argument("--layerwise", action="store_true",
                            help="fit each site's thresholds on the SNN's own inputs against the ANN, in execution "
                                 "order (layer-by-layer matching; see README)")
    thresholds.add_argument("--matching-inputs", type=int, default=16,
                            help="calibration inputs used by layer-by-layer matching")
    thresholds.add_argument("--threshold-scale", type=float, default=1.0,
                            help="threshold guidance: global factor on all thresholds at sampling time")
    thresholds.add_argument("--off-threshold-scale", type=float, default=1.0,
                            help="factor on the SiLU sites' calibrated negative thresholds (> 1: a coarser negative "
                                 "lobe, fewer OFF spikes; see README)")

    neurons = parser.add_argument_group("neurons")
    neurons.add_argument("--neuron", choices=NEURONS, default="exact",
                         help="exact: graded-spike ON/OFF neurons whose count equals the quantised twin's; "
                              "single-spike: at most one spike per step (earlier versions)")
    neurons.add_argument("--max-payload", type=int, default=None,
                         help="exact neurons: at most this many spikes per step and side (default T: exact)")
    neurons.add_argument("--emission", default=ConversionPolicy.emission,  # checked by the policy: a one-line error
                         help=f"{' | '.join(EMISSIONS)}: when exact neurons emit their count (the final count, "
                              "and so the output, is the same): spread (default: binary spikes spread evenly over "
                              "the T steps, layer-pipelined), eager every step, hysteresis (silent for "
                              "--emission-onset steps, take-backs only beyond --emission-margin units), deferred "
                              "(one graded spike at the last step: a one-step quantised ANN); see docs/method.md")
    neurons.add_argument("--attention-probabilities", default=ConversionPolicy.attention_probabilities,
                         help=f"{' | '.join(ATTENTION_PROBABILITIES)}: at --spiking full, softmax probabilities analog "
                              "(v spikes select them) or spiking (a site on P: accumulates only, P quantised); "
                              "see README")
    neurons.add_argument("--emission-margin", type=int, default=ConversionPolicy.emission_margin,
                         help="hysteresis: take back spikes only once the target has fallen more than this many units")
    neurons.add_argument("--emission-onset", type=int, default=ConversionPolicy.emission_onset,
                         help="hysteresis: silent steps before a neuron starts emitting")
    neurons.add_argument("--negative-lobe", choices=NEGATIVE_LOBES, default="signed",
                         help="signed: +1/-1 spikes follow SiLU exactly; relu: plain IF, ReLU proxy")
    neurons.add_argument("--norm", choices=NORM_MODES, default="running",
                         help="GroupNorm on the running mean of the input, or frozen from calibration")
    neurons.add_argument("--attention", choices=ATTENTION_MODES, default="running",
                         help="softmax attention on the running mean, or on each time step")
    neurons.add_argument("--input-encoding", choices=INPUT_ENCODINGS, default="analog",
                         help="analog: conv_in(x) injected as a current; spikes: x encoded by signed IF neurons")
    neurons.add_argument("--membrane-init", type=float, default=0.5,
                         help="initial membrane potential as a fraction of the threshold")
    neurons.add_argument("--spiking", default=ConversionPolicy.spiking,  # checked by the policy: a one-line error
                         help=f"{' | '.join(SPIKING_LEVELS)}: how much is spike-driven: hybrid (ResNet convs; "
                              "residual stream and attention analog), residual (also shortcut / down / up convs and "
                              "q/k/v), full (also attention's products and output projection); see README")

    evaluation = parser.add_argument_group("fidelity check")
    evaluation.add_argument("--eval-samples", type=int, default=8,
                            help="images sampled by ANN and SNN from the same noise (0 skips the check)")
    evaluation.add_argument("--eval-steps", type=int, default=20, help="sampler steps")
    evaluation.add_argument("--sampler", choices=SAMPLERS, default="ddim", help="diffusers sampler (ddim: eta 0)")
    add_simulation_argument(evaluation, "steps, closed-form (the quantised twin, ANN cost) or both (and their "
                                        "agreement in summary.json)")
    return parser


def policy_from_args(args: argparse.Namespace) -> ConversionPolicy:
    return ConversionPolicy(
        timesteps=args.timesteps,
        neuron=args.neuron,
        max_payload=args.max_payload,
        emission=args.emission,
        emission_margin=args.emission_margin,
        emission_onset=args.emission_onset,
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
        off_threshold_scale=args.off_threshold_scale,
        spiking=args.spiking,
        attention_probabilities=args.attention_probabilities,
    )


@dataclass(frozen=True)
class ConvertSettings:
    """Everything one conversion needs, checked before any model loads."""

    source: SourceCalibration  # the model, and how to calibrate it unless `record` is given
    policy: ConversionPolicy
    out: Path
    overwrite: bool = False
    record: Path | None = None
    fidelity: SamplingSettings | None = None  # None: no fidelity check
    simulation: str = "steps"  # of the fidelity check

    def __post_init__(self) -> None:
        ensure_free_target(self.out, self.overwrite)  # and proven writable, before any model loads

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "ConvertSettings":
        policy = policy_from_args(args)
        source = SourceCalibration.from_args(args)
        at_least("--eval-samples", args.eval_samples, 0)
        at_least("--eval-steps", args.eval_steps, 1)
        fidelity = None
        if args.eval_samples > 0:
            fidelity = SamplingSettings(num_samples=args.eval_samples, steps=args.eval_steps, seed=args.seed,
                                        sampler=args.sampler, batch_size=args.eval_samples, device=args.device)
        out = args.out or Path("runs") / f"{Path(str(args.checkpoint)).name}-T{policy.timesteps}"
        if args.record is not None:  # nothing to calibrate: no images to read
            source = replace(source, calib_data=None)
        return cls(source=source, policy=policy, out=out, overwrite=args.overwrite, record=args.record,
                   fidelity=fidelity, simulation=args.simulation)


def run(settings: ConvertSettings) -> dict:
    """Compose the stages: conversion (converter), the record (calibration), the check (eval)."""
    # Heavy imports after parsing and validation: --help and option errors never wait for torch.
    from ..calibration.collect import calibrate
    from ..calibration.record import CalibrationRecord
    from ..converter.convert import convert_calibrating
    from ..converter.folder import save_converted
    from ..converter.spiking.operations import operations_report
    from ..converter.spiking.simulation import check_policy
    from ..core.atomic import atomic_folder
    from ..eval.runs.paired import fidelity_check

    check_policy(settings.simulation, settings.policy.attention)  # before any model loads
    record = CalibrationRecord.load(settings.record) if settings.record is not None else None
    device, source, images = settings.source.load()
    if record is not None:
        record.check_source(source.fingerprint)

    def obtain_record(model) -> CalibrationRecord:  # runs once the SNN is built (the model is convertible)
        print(f"source: {model.origin} ({model.format}, weights: {model.weights})", file=sys.stderr)
        if record is not None:
            return record
        return calibrate(model.unet, model.scheduler_config, settings.source.calibration, model.fingerprint, device,
                         images)

    conversion = convert_calibrating(source, settings.policy, obtain_record, device)
    summary = {"source": source.describe(), "policy": conversion.snn.policy.to_dict(), "time_seconds": conversion.seconds}
    with atomic_folder(settings.out, overwrite=settings.overwrite) as staging:
        save_converted(conversion.snn, conversion.record, staging)
        (staging / "operations.json").write_text(json.dumps(operations_report(conversion.snn), indent=2))
        if settings.fidelity is not None:
            summary["fidelity"] = fidelity_check(conversion.snn, source, replace(settings.fidelity, device=device),
                                                 staging / "grid.png", settings.simulation)
        (staging / "summary.json").write_text(json.dumps(summary, indent=2))
    summary["out"] = str(settings.out)
    return summary


def report(summary: dict) -> None:
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
            print_equivalence(fidelity["equivalence"], fidelity["closed_form"]["psnr_db"], "")


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    retain_freed_memory()
    return run_command(PROG, lambda: run(ConvertSettings.from_args(args)), report)


if __name__ == "__main__":
    sys.exit(main())
