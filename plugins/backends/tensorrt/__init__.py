"""TensorRT backend: ``model.plan`` engines through the TensorRT Python runtime."""
