"""Calibrated ANN -> spiking UNet.

This folder holds the conversion itself (convert.py: the lifecycle; layerwise.py: threshold
search per layer; folder.py: the converted model's folder, written and read back;
allocator.py: CPU memory; equivalence.py: SNN vs its quantised twin). The
spiking runtime the conversion builds lives in `spiking/`, fine-tuning of a converted model in
`finetune/`, and export to other formats in `export/`.
"""
