"""Workplan 1.2: inference optimisation. ONNX export (AG-DS-ONNXCONV-001), the TensorRT
profiles and INT8 model (AG-DS-TRTPROFILE-001), engine builds (AG-DS-TRTENGINE-001) and the
benchmark of every backend (AG-DS-TRTTEST-001); trt/ talks to TensorRT, perf/ times backends."""
