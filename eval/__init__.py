"""Evaluation of converted SNNs against their source ANNs.

The files here are the script entry points (`python eval/compare.py`, ...); the library lives in
`metrics/` (energy, FID), `runs/` (sampling, distributed and paired runs) and `reports/`
(comparison, report, plots, sweeps, benchmark)."""
