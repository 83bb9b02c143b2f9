"""Shared ML code for the training/inference handlers; imported only inside handler.run, never at atlas import time."""
