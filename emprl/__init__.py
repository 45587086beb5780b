"""EmpRL: empathy-level alignment by reinforcement learning for empathetic response generation."""

__version__ = "0.1.0"

from emprl.run import Run, setup  # noqa: E402  (the one call every notebook makes first)

__all__ = ["Run", "setup"]
