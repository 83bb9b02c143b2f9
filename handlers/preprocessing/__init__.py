"""Workplan 2.2: data preprocessing on the GPU. The DALI input pipeline (AG-DS-DALI-001) and
the NumPy preprocessing ported to CuPy (AG-DS-CUPY-001)."""
