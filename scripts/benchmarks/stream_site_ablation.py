"""Which residual-stream sites cost the quality: eps error with only one family of stream sites spiking.

`python scripts/benchmarks/stream_site_ablation.py --record DIR --out FILE.json [--level full]
[--timesteps 4] [--num-samples 4] [--seed 1]`: takes the x_t the ANN visits along DDIM-20
trajectories from `--num-samples` held-out noises (`--seed`), four steps spread over each, and
measures the SNN's eps error relative to the ANN on them (one UNet call per configuration): hybrid
(no stream site), the level with every stream site, and for each family of stream sites
(shortcut, down-sampling, up-sampling, attention input; at `full` also attention's q/k/v and
output sites) the level with only that family spiking, the others made analog (the site passes
its current through, no bias correction). `--each FAMILY` instead: one configuration per site of
that family, only that site spiking. `--keep-analog A,B`: also the level with the sites whose names
contain A or B analog. A measurement script, not part of the product.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch
from sdm.calibration.record import CalibrationRecord
from sdm.calibration.sites import IDENTITY
from sdm.converter.convert import convert
from sdm.converter.spiking.policy import ConversionPolicy
from sdm.core.diffusion import as_eps_function, initial_noise
from sdm.eval.runs.sampling import run_sampler
from sdm.pretrained.loading import load_source_model
from sdm.pretrained.zoo import DEFAULT_MODEL

FAMILIES = {
    "shortcut": lambda name: name.endswith("conv_shortcut.input"),
    "down-sampling": lambda name: ".downsamplers." in name,
    "up-sampling": lambda name: ".upsamplers." in name,
    "attention input (q/k/v)": lambda name: name.endswith("to_q.input"),
    "attention q/k/v outputs": lambda name: name.endswith(("to_q.output", "to_k.output", "to_v.output")),
    "attention output (to_out)": lambda name: name.endswith("to_out.0.input"),
}
PICKED_STEPS = (2, 8, 14, 19)


def _analog(site) -> None:
    site.forward = lambda current: current
    site.output_shift.zero_()


def trajectory_inputs(source, num_samples: int, seed: int, steps: int) -> tuple[torch.Tensor, torch.Tensor]:
    config = source.unet.config
    noise = initial_noise(num_samples, (config.in_channels, config.sample_size, config.sample_size), seed)
    seen: list[tuple[torch.Tensor, torch.Tensor]] = []
    ann = as_eps_function(source.unet)

    def recording(x, t):
        seen.append((x.clone(), torch.as_tensor(t).reshape(-1).expand(x.shape[0]).clone()))
        return ann(x, t)

    run_sampler(recording, noise, "ddim", source.scheduler_config, steps, seed, num_samples, desc="ANN sampling")
    picked = [seen[i] for i in PICKED_STEPS if i < len(seen)]
    return torch.cat([x for x, _ in picked]), torch.cat([t for _, t in picked])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ann", default=DEFAULT_MODEL)
    parser.add_argument("--record", type=Path, required=True)
    parser.add_argument("--level", default="full")
    parser.add_argument("--timesteps", type=int, default=4)
    parser.add_argument("--num-samples", type=int, default=4)
    parser.add_argument("--steps", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--each", choices=list(FAMILIES), default=None)
    parser.add_argument("--keep-analog", default="")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    torch.set_num_threads(1)
    source = load_source_model(args.ann)
    record = CalibrationRecord.load(args.record)
    x, t = trajectory_inputs(source, args.num_samples, args.seed, args.steps)
    with torch.no_grad():
        reference = source.unet(x, t).sample.flatten(1)
    stream = {name for name, stats in record.sites.items() if stats.activation == IDENTITY}
    configurations: dict[str, set[str] | None] = {"hybrid (none)": None, f"{args.level} (all)": set()}
    kept = [part for part in args.keep_analog.split(",") if part]
    if kept:
        configurations[f"{args.level} except {args.keep_analog}"] = {n for n in stream if any(k in n for k in kept)}
    if args.each is None:
        for family, member in FAMILIES.items():
            configurations[f"only {family}"] = {name for name in stream if not member(name)}
    else:
        for site in sorted(name for name in stream if FAMILIES[args.each](name)):
            configurations[f"only {site}"] = stream - {site}
    results = {}
    for label, analog in configurations.items():
        snn = convert(source, record, ConversionPolicy(timesteps=args.timesteps,
                                                       spiking="hybrid" if analog is None else args.level))
        sites = snn.sites()
        if analog is not None:
            spiking = [name for name in stream - analog if name in sites]
            if not spiking and analog:
                continue  # this family does not exist at this level
            for name in analog & set(sites):
                _analog(sites[name])
        with torch.no_grad():
            eps = snn(x, t).sample.flatten(1)
        error = ((eps - reference).norm(dim=1) / reference.norm(dim=1)).mean()
        results[label] = {"eps_rel_l2": float(error), "inputs": len(x)}
        print(label, json.dumps(results[label]), flush=True)
    args.out.write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                    "picked_steps": PICKED_STEPS, "results": results}, indent=2))


if __name__ == "__main__":
    main()
