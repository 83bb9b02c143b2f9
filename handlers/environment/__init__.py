"""Workplan 1.1.1: the CUDA stack (AG-DS-CUDASETUP-001: driver, toolkit, cuDNN, install scripts)
and the libraries on it (AG-DS-LIBTEST-001: the GPU seen and used by PyTorch and TensorFlow)."""
