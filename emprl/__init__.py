"""EmpRL: empathy-level alignment by reinforcement learning for empathetic response generation."""

__version__ = "0.1.0"
