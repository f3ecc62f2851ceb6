"""dvqvae_export: TorchScript, ONNX and TensorRT export of the inference graph."""
