"""Runs of models: seeded sampling, its split over processes, paired ANN-vs-SNN runs."""
