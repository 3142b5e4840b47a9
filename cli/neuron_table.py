"""`python eval/neuron_table.py`: how exactly each neuron kind computes the quantised twin.

Converts the source with a saved calibration record for every T and neuron kind (and payload
bound), runs each on recorded x_t at the given diffusion timesteps, and prints, per model, the
fraction of neurons whose count differs from the twin on their own time-averaged input, the
neurons that fired both signs, site MSE SNN / twin, and spikes per neuron and UNet call
(converter/equivalence.py). Writes table.json and table.md to --out.
"""

from __future__ import annotations

import argparse
import json
import sys
from dataclasses import dataclass
from pathlib import Path

from ..converter.spiking.policy import ConversionPolicy
from ..core.atomic import ensure_free_target
from ..core.settings import at_least, parse_json_object, parse_list
from .common import add_ann_argument, add_output_arguments, make_parser, run_command

PROG = "neuron_table.py"
COLUMNS = ("model", "pinned_count_differs_fraction", "both_signs_fraction", "site_mse_snn_over_twin",
           "count_differs_fraction", "count_differs_ties_fraction", "spikes_per_neuron")


def build_parser() -> argparse.ArgumentParser:
    p = make_parser(PROG, __doc__)
    add_ann_argument(p)
    p.add_argument("--record", type=Path, required=True, help="folder with a calibration record (sdm-calibrate --out)")
    p.add_argument("--timesteps", default="4,8,16", help="comma list of T")
    p.add_argument("--neurons", default="single-spike,exact", help="comma list of neuron kinds")
    p.add_argument("--payloads", default="", help="comma list of payload bounds B for extra exact models (e.g. 1,2)")
    p.add_argument("--at", default="700,300", help="diffusion timesteps of the recorded inputs")
    p.add_argument("--inputs", type=int, default=8, help="inputs per diffusion timestep")
    p.add_argument("--policy", default="{}", help="other conversion options as JSON")
    add_output_arguments(p)
    return p


@dataclass(frozen=True)
class NeuronTableSettings:
    ann: str
    record: Path
    policies: dict[str, ConversionPolicy]  # by model label, every one valid
    at: tuple[int, ...]
    inputs: int
    out: Path
    overwrite: bool

    def __post_init__(self) -> None:
        at_least("--inputs", self.inputs, 1)
        ensure_free_target(self.out, self.overwrite)

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> "NeuronTableSettings":
        extra = parse_json_object(args.policy, "--policy")
        variants = [{"neuron": n} for n in args.neurons.split(",")]
        variants += [{"neuron": "exact", "max_payload": b} for b in parse_list(args.payloads, "--payloads")]
        policies = {f"T{t}-{v['neuron']}" + (f"-B{v['max_payload']}" if "max_payload" in v else ""):
                    ConversionPolicy.from_dict({**extra, **v, "timesteps": t})
                    for t in parse_list(args.timesteps, "--timesteps") for v in variants}
        return cls(ann=args.ann, record=args.record, policies=policies, at=tuple(parse_list(args.at, "--at")),
                   inputs=args.inputs, out=args.out, overwrite=args.overwrite)


def run(settings: NeuronTableSettings) -> list[dict]:
    # Heavy imports after parsing and validation (fast --help).
    import torch

    from ..calibration.record import CalibrationRecord
    from ..converter.convert import convert
    from ..converter.equivalence import neuron_table, record_inputs_at
    from ..core.atomic import atomic_folder
    from ..pretrained.loading import load_source_model

    torch.set_grad_enabled(False)
    source = load_source_model(settings.ann)
    record = CalibrationRecord.load(settings.record)
    probes = [record_inputs_at(record.inputs, record.input_timesteps, t, settings.inputs) for t in settings.at]
    rows = []
    for label, policy in settings.policies.items():  # one model in memory at a time
        rows += neuron_table({label: convert(source, record, policy)}, probes)
        print(" | ".join(_cell(rows[-1][c]) for c in COLUMNS), file=sys.stderr)
    with atomic_folder(settings.out, overwrite=settings.overwrite) as staging:
        recorded = {"ann": settings.ann, "record": str(settings.record), "at": list(settings.at),
                    "inputs": settings.inputs, "policies": {k: p.to_dict() for k, p in settings.policies.items()}}
        (staging / "table.json").write_text(json.dumps({"settings": recorded, "rows": rows}, indent=2))
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
        (staging / "table.md").write_text("\n".join(lines) + "\n")
    return rows


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return run_command(PROG, lambda: run(NeuronTableSettings.from_args(args)),
                       lambda rows: print(f"wrote {args.out} ({len(rows)} models)"))


if __name__ == "__main__":
    sys.exit(main())
