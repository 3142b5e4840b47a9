"""Measures: energy (operation counts) and FID (Inception statistics)."""
