"""Evaluation of converted SNNs against their source ANNs: image I/O, datasets, FID/IS."""
