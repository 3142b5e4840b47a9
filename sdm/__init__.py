"""sdm-convert: pretrained diffusion UNets to spiking UNets. The stages live in sdm.pretrained,
sdm.calibration, sdm.converter and sdm.eval; what they share in sdm.core."""
