"""Process-wide run settings shared by the notebooks."""

from __future__ import annotations

import os

import torch


def set_threads(profile) -> int:
    """Set torch's CPU threads: ``$EMPRL_THREADS`` if set, else 1 at smoke, else every core.

    Tiny smoke models gain nothing from a second thread and lose a lot when the cores are shared
    (measured here: 4-30x slower with two threads on a busy two-core machine).
    """
    value = os.environ.get("EMPRL_THREADS")
    if value:
        try:
            threads = int(value)
        except ValueError:
            raise ValueError(f"EMPRL_THREADS must be a positive integer, got {value!r}") from None
        if threads < 1:
            raise ValueError(f"EMPRL_THREADS must be a positive integer, got {value!r}")
    else:
        threads = 1 if getattr(profile, "is_smoke", profile == "smoke") else (os.cpu_count() or 1)
    torch.set_num_threads(threads)
    return threads
