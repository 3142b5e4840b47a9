"""Source models: find, validate and load the ANN diffusion UNets that get converted.

Nothing is imported here, so the light modules (`zoo`) load without torch for fast `--help`;
use `sdm.pretrained.loading.load_source_model`.
"""
