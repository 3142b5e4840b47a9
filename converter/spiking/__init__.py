"""The spiking runtime: neurons, spiking layers, the per-type mapping table, the policy, the
SpikingUNet2DModel and its folder, its two simulations (steps, closed form)."""
