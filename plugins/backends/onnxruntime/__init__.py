"""ONNX Runtime backend: ``model.onnx`` models, as Triton's onnxruntime backend serves them."""
