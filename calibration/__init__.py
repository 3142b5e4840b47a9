"""Activation statistics of a source ANN, and the thresholds chosen from them."""
