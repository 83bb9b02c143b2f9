"""Workplan 1.1.2: training on the GPU (AG-DS-SCRIPTGPU-001, with the audit of the user's
scripts in audit/) and under DDP through torchrun (AG-DS-DISTRIBUTED-001)."""
