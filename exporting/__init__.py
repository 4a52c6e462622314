"""Export internals: checkpoints, checks, quantization, Triton, end-to-end graphs."""
