"""Calibrated ANN -> spiking UNet: neurons, spiking layers, the conversion lifecycle, export."""
