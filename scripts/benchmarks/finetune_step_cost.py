"""Seconds per fine-tuning step, `--method tsm` (T steps simulated, surrogate gradients) vs
`--method qat` (the quantised twin, one pass), measured side by side in one process.

    python scripts/benchmarks/finetune_step_cost.py --snn runs/ddpm-cifar10-ch64-T4 --out STEPCOST \
        [--steps 3] [--batch-size 8] [--rounds 2]

Each round runs every variant for --steps steps on the same SNN and batch size (tiny distillation
pool, checkpoints off; the sample target unrolls a 20-step DDIM trajectory per step) and reads `seconds_per_step_after_first` from its finetune.json; rounds
alternate the variants so that load from other processes hits all of them alike. Writes
OUT/step_cost.json (per variant: every round's time and the median).
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
from pathlib import Path

from sdm.cli.finetune import main as finetune_main

VARIANTS = {
    "tsm --train thresholds": ["--method", "tsm", "--train", "thresholds"],
    "qat --weights none": ["--method", "qat"],
    "tsm --train all": ["--method", "tsm", "--train", "all"],
    "qat --weights all": ["--method", "qat", "--weights", "all"],
    "qat --weights lora --distill-target sample": ["--method", "qat", "--weights", "lora", "--distill-target", "sample",
                                                   "--trajectory-steps", "20"],
}
EPS_POOL = ["--pool", "trajectories", "--trajectories", "2", "--trajectory-steps", "2", "--refresh-every", "0"]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="finetune_step_cost.py", description=__doc__.splitlines()[0])
    parser.add_argument("--snn", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--steps", type=int, default=3)
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args(argv)
    times: dict[str, list[float]] = {name: [] for name in VARIANTS}
    with tempfile.TemporaryDirectory() as scratch:
        for round_ in range(args.rounds):
            for name, options in VARIANTS.items():
                out = Path(scratch) / f"{round_}-{len(times[name])}-{name.replace(' ', '_')}"
                code = finetune_main(["--snn", str(args.snn), "--out", str(out), "--steps", str(args.steps),
                                      "--batch-size", str(args.batch_size), "--checkpoint-every", "0",
                                      "--eval-size", "2", *([] if "sample" in options else EPS_POOL), *options])
                if code:
                    return code
                times[name].append(json.loads((out / "finetune.json").read_text())["seconds_per_step_after_first"])
    result = {name: {"seconds_per_step": values, "median": statistics.median(values)} for name, values in times.items()}
    result["settings"] = {"snn": str(args.snn), "steps": args.steps, "batch_size": args.batch_size, "rounds": args.rounds}
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "step_cost.json").write_text(json.dumps(result, indent=2))
    print(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
