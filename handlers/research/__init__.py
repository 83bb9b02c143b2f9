"""Workplan 2.1: model research. The literature survey, a manual step (AG-DS-LITREVIEW-001),
and a new architecture prototyped against the baseline (AG-DS-PROTOTYPE-001)."""
