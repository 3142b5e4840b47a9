"""The spiking runtime: neurons, spiking layers, the per-type mapping table, the policy, the
SpikingUNet2DModel, its two simulations (steps, closed form) and its spike codings (rate, delta)."""
