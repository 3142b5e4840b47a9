"""Export of a converted model: ONNX (with its spike-parity check) and NIR."""
