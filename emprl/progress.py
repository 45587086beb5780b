"""How the library's loops show progress: the one place that decides it.

``$EMPRL_PROGRESS`` chooses:

* ``auto`` (the default): tqdm's choice, a widget in JupyterLab (needs ipywidgets), a text bar in a
  terminal;
* ``summary``: a few plain lines per loop on stdout, at each quarter and at the end (an inner loop,
  ``leave=False``, only at the end). The pipeline sets it for papermill, whose rendered notebooks keep
  no widget updates and every redraw of a text bar as a fragment on stderr;
* ``off``: nothing.
"""

from __future__ import annotations

import os
import sys
import time

MODES = ("auto", "summary", "off")


def mode() -> str:
    value = os.environ.get("EMPRL_PROGRESS", "auto") or "auto"
    if value not in MODES:
        raise ValueError(f"EMPRL_PROGRESS must be one of {MODES}, got {value!r}")
    return value


def bar(iterable=None, *, desc: str = "", total: int | None = None, initial: int = 0, disable: bool = False,
        leave: bool = True, unit: str = "it"):
    """A progress bar over ``iterable`` (or updated by hand with ``update``), shown as ``$EMPRL_PROGRESS`` says."""
    chosen = "off" if disable else mode()
    if chosen == "auto":
        from tqdm.auto import tqdm

        return tqdm(iterable, desc=desc, total=total, initial=initial, leave=leave, unit=unit)
    return Summary(iterable, desc=desc, total=total, initial=initial, quiet=chosen == "off", quarters=leave,
                   unit=unit)


class Summary:
    """The few-lines bar: the tqdm calls the loops make (iterate, update, set_postfix, close)."""

    def __init__(self, iterable=None, *, desc: str = "", total: int | None = None, initial: int = 0,
                 quiet: bool = False, quarters: bool = True, file=None, unit: str = "it"):
        self.iterable, self.desc, self.n, self.start_n = iterable, desc, initial, initial
        if total is None and iterable is not None and hasattr(iterable, "__len__"):
            total = initial + len(iterable)
        self.total, self.quiet, self.quarters, self.unit = total, quiet, quarters, unit
        self.file = file if file is not None else sys.stdout
        self.postfix, self.closed, self.start = "", False, time.perf_counter()
        self._next_quarter = self._quarter_after(initial)

    def _quarter_after(self, n: int) -> int | None:
        if not self.quarters or not self.total:
            return None
        return next((q * self.total // 4 for q in (1, 2, 3) if q * self.total // 4 > n), None)

    def _write(self, what: str) -> None:
        if not self.quiet:
            print(f"[{self.desc}] {what}", file=self.file, flush=True)

    def _status(self) -> str:
        elapsed = time.perf_counter() - self.start
        done = self.n - self.start_n
        rate = f", {done / elapsed:.2f} {self.unit}/s" if elapsed > 0 and done else ""
        if rate and self.total and self.n < self.total:  # the remaining items at the rate so far
            rate += f", ETA {(self.total - self.n) * elapsed / done:.0f} s"
        of = f"/{self.total}" if self.total else ""
        return f"{self.n}{of} in {elapsed:.1f} s{rate}" + (f" ({self.postfix})" if self.postfix else "")

    def update(self, n: int = 1) -> None:
        self.n += n
        if self._next_quarter is not None and self.n >= self._next_quarter and self.n < (self.total or 0):
            self._write(self._status())
            self._next_quarter = self._quarter_after(self.n)

    def set_postfix(self, ordered_dict=None, refresh: bool = True, **values) -> None:
        """tqdm's signature, so callers can pass ``refresh`` (meaningless here) without it being shown."""
        values = {**(ordered_dict or {}), **values}
        self.postfix = ", ".join(f"{k}={v}" for k, v in values.items())

    def close(self) -> None:
        if not self.closed:
            self.closed = True
            self._write("done " + self._status())

    def __iter__(self):
        for item in self.iterable:
            yield item
            self.update(1)
        self.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
        return False
