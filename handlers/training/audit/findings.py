"""What the script audit reports: its rule names and one finding. Kept below both the rules
(libcst) and the folder walk, so neither imports the other."""
from __future__ import annotations

from dataclasses import dataclass

RULES = ("hardcoded-cuda", "model-not-moved", "tensor-not-moved", "dataloader-no-pin-memory",
         "dataloader-no-workers", "torch-load-no-map-location", "eval-without-no-grad",
         "eval-without-model-eval")


@dataclass(frozen=True)
class Finding:
    file: str      # relative to the audited folder
    line: int
    column: int    # 1-based
    rule: str
    message: str
    fix: str       # what the patch does; "" when the fix is left to the user
    fixed: bool
