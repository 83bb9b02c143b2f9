"""TensorRT engines: the optimisation profile and build settings, building (Python API or trtexec), loading."""
