"""Mechanisms every stage shares: errors, atomic output, devices, diffusion, data, training."""
