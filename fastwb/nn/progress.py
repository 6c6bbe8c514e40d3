"""The progress bar of ``fit``: tqdm when it is installed, a one-line bar of
our own otherwise, drawn only on a terminal, and a line per epoch.

``FASTWB_NO_PROGRESS=1`` turns the bar off (the epoch lines stay while
``verbose``)."""

import os
import sys
import time

__all__ = ["Progress"]


def _tqdm():
    try:
        from tqdm import tqdm
    except ImportError:
        return None
    return tqdm


class Progress:
    """``Progress(total, label, verbose)``: ``update(loss)`` after each step,
    ``close(line)`` at the end of the epoch (prints ``line`` when verbose)."""

    def __init__(self, total, label, verbose):
        self.total, self.label, self.done = total, label, 0
        self.verbose = verbose
        self.live = bool(verbose) and sys.stderr.isatty() and not os.environ.get("FASTWB_NO_PROGRESS")
        self.t0 = time.perf_counter()
        self.last = 0.0
        self.bar = None
        if self.live:
            tqdm = _tqdm()
            if tqdm is not None:
                self.bar = tqdm(total=total, desc=label, unit="step", leave=False, file=sys.stderr,
                                mininterval=0.1, dynamic_ncols=True)

    def update(self, loss):
        self.done += 1
        if not self.live:
            return
        now = time.perf_counter()
        if now - self.last < 0.1 and self.done < self.total:
            if self.bar is not None:
                self.bar.update(1)
            return
        self.last = now
        if self.bar is not None:
            self.bar.set_postfix(loss=f"{loss:.4f}", refresh=False)
            self.bar.update(1)
            return
        width = 30
        filled = int(width * self.done / self.total)
        rate = self.done / max(now - self.t0, 1e-9)
        sys.stderr.write(f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] {self.done}/{self.total} "
                         f"loss {loss:.4f} {rate:,.0f} steps/s")
        sys.stderr.flush()

    def close(self, line):
        if self.bar is not None:
            self.bar.close()
        elif self.live:
            sys.stderr.write("\r" + " " * 100 + "\r")
            sys.stderr.flush()
        if self.verbose:
            print(line, flush=True)
