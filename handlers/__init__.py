"""atlas handlers, one folder per area of the workplan (Ana Görev > Alt Görev):

environment/    1.1.1  CUDA set-up and library checks (CUDASETUP, LIBTEST)
training/       1.1.2  GPU training and DDP (SCRIPTGPU with its script audit, DISTRIBUTED)
inference/      1.2    ONNX, TensorRT profiles and engines, the benchmark (ONNXCONV, TRTPROFILE,
                       TRTENGINE, TRTTEST), with trt/ and perf/ under it
research/       2.1    the literature survey (a manual step) and the model prototype
preprocessing/  2.2    GPU data preprocessing (DALI, CuPy)
ml/                    the shared ML library the steps build on

Handlers are found through the `atlas.handlers` entry points. Each handler module stays
light at import time; frameworks (torch, TensorRT, DALI, CuPy) are imported inside a
handler's `run`, so validating and planning never load them.
"""
