"""Inference benchmarking that treats every backend alike.

`harness` times any `Backend` (warm-up, timed loop, statistics, failures recorded rather
than dropped); `backends` adapts PyTorch, ONNX Runtime and TensorRT to that contract;
`timing` holds the clocks (CUDA events on the GPU, the wall clock on the CPU) and `stats`
the arithmetic. `suite` builds the backends a step compares and `report` renders results.
Frameworks are imported inside functions, so importing this package loads none of them.
"""
