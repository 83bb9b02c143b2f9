"""atlas: a declarative task runner for GPU machine-learning workplans."""

__version__ = "0.1.0"
