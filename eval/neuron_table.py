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
from pathlib import Path

import torch

from sdm.calibration.record import CalibrationRecord
from sdm.converter.convert import convert
from sdm.converter.export import atomic_folder, ensure_free_target
from sdm.converter.policy import ConversionPolicy
from sdm.core.errors import SdmError, run_reporting_errors
from sdm.converter.equivalence import neuron_table, record_inputs_at
from sdm.pretrained.loading import load_source_model
from sdm.pretrained.zoo import DEFAULT_MODEL

COLUMNS = ("model", "pinned_count_differs_fraction", "both_signs_fraction", "site_mse_snn_over_twin",
           "count_differs_fraction", "count_differs_ties_fraction", "spikes_per_neuron")


def _ints(text: str) -> list[int]:
    try:
        return [int(v) for v in text.split(",")]
    except ValueError:
        raise SdmError(f"not a comma list of integers: {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="neuron_table.py", description=__doc__.splitlines()[0])
    p.add_argument("--ann", default=DEFAULT_MODEL, help=f"source ANN (default {DEFAULT_MODEL})")
    p.add_argument("--record", type=Path, required=True, help="folder with a calibration record (sdm-convert --out)")
    p.add_argument("--timesteps", default="4,8,16", help="comma list of T (default 4,8,16)")
    p.add_argument("--neurons", default="single-spike,exact", help="comma list of neuron kinds (default both)")
    p.add_argument("--payloads", default="", help="comma list of payload bounds B for extra exact models (e.g. 1,2)")
    p.add_argument("--at", default="700,300", help="diffusion timesteps of the recorded inputs (default 700,300)")
    p.add_argument("--inputs", type=int, default=8, help="inputs per diffusion timestep (default 8)")
    p.add_argument("--policy", default="{}", help="other conversion options as JSON")
    p.add_argument("--out", type=Path, required=True)
    p.add_argument("--overwrite", action="store_true")
    return p


def run(args: argparse.Namespace) -> list[dict]:
    try:
        extra = json.loads(args.policy)
    except json.JSONDecodeError as exc:
        raise SdmError(f"--policy is not JSON: {exc}") from None
    variants = [{"neuron": n} for n in args.neurons.split(",")]
    variants += [{"neuron": "exact", "max_payload": b} for b in (_ints(args.payloads) if args.payloads else [])]
    policies = {f"T{t}-{v['neuron']}" + (f"-B{v['max_payload']}" if "max_payload" in v else ""):
                ConversionPolicy.from_dict({**extra, **v, "timesteps": t}) for t in _ints(args.timesteps) for v in variants}
    ensure_free_target(args.out, args.overwrite)
    source = load_source_model(args.ann)
    record = CalibrationRecord.load(args.record)
    probes = [record_inputs_at(record.inputs, record.input_timesteps, t, args.inputs) for t in _ints(args.at)]
    rows = []
    for label, policy in policies.items():  # one model in memory at a time
        rows += neuron_table({label: convert(source, record, policy)}, probes)
        print(" | ".join(_cell(rows[-1][c]) for c in COLUMNS), file=sys.stderr)
    with atomic_folder(args.out, overwrite=args.overwrite) as staging:
        (staging / "table.json").write_text(json.dumps({"settings": {k: str(v) for k, v in vars(args).items()},
                                                        "rows": rows}, indent=2))
        lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
        lines += ["| " + " | ".join(_cell(row[c]) for c in COLUMNS) + " |" for row in rows]
        (staging / "table.md").write_text("\n".join(lines) + "\n")
    return rows


def _cell(value) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)


def main(argv: list[str] | None = None) -> int:
    torch.set_grad_enabled(False)
    args = build_parser().parse_args(argv)
    rows, code = run_reporting_errors("neuron_table.py", lambda: run(args))
    if code:
        return code
    print(f"wrote {args.out} ({len(rows)} models)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
