"""HTTP service that serves exported GAN generators through ONNX Runtime (never imports torch)."""
