"""The GPU-readiness audit of a folder of PyTorch training scripts (libcst): the rules, their
findings, and the report with a patched copy and a diff."""
