"""sdm-convert: pretrained diffusion UNets to spiking UNets.

The repository root is the package `sdm` (pyproject.toml maps it), so every import between its
modules is relative and names a file of the checkout. Its stages, each importing only those
before it: `core` (what every stage shares) <- `pretrained` <- `calibration` <- `converter`
(`spiking`, `finetune`, `export`) <- `eval` (`metrics`, `runs`, `reports`) <- `cli`."""
