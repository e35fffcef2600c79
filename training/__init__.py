"""Training tower: data, networks, losses, the loop, and ONNX export of the generator."""
