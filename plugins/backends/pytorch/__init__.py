"""PyTorch backend: TorchScript ``model.pt`` models, as Triton's pytorch backend serves them."""
