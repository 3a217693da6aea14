"""bsq_explore: bit-level sparsity quantization you can watch."""
__version__ = "0.1.0"
