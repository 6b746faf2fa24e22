"""The progress of a run: on a terminal, one bar (trials done, failures, current
front size, elapsed and remaining time) with log lines printed above it; when the
output is not a terminal, or with ``--no-progress``, one plain line per finished
trial instead. It draws the numbers the trial loop keeps; it reads no storage."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """A tqdm bar over COMPLETE trials on a terminal; one line per finished trial otherwise.

    Example:
        >>> import io
        >>> out = io.StringIO()
        >>> p = Progress(10, done=2, enabled=True, stream=out)  # not a terminal: lines
        >>> p.trial(3, "COMPLETE", metric="accuracy", value=0.91, size_bytes=4096, ratio=8.0, seconds=1.5,
        ...         complete=3, front=1)
        >>> out.getvalue()
        'trial 3 COMPLETE: val accuracy 0.9100, 4,096 B (8.0x), 1.5 s · 3/10 complete, front 1\\n'
    """

    def __init__(self, total: int, *, done: int = 0, enabled: bool = True, stream=sys.stderr) -> None:
        self.stream, self.total = stream, total
        self.lines = not (enabled and _is_terminal(stream))
        self.bar = tqdm(total=total, initial=min(done, total), disable=self.lines, file=stream,
                        unit="trial", dynamic_ncols=True, desc="trials",
                        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}<{remaining} {postfix}")

    def show(self, *, complete: int, failed: int, front: int) -> None:
        self.bar.set_postfix_str(f"failed {failed} · front {front}", refresh=False)
        delta = min(complete, self.bar.total) - self.bar.n
        if delta > 0:
            self.bar.update(delta)
        else:
            self.bar.refresh()

    def around(self, log):
        """``log`` wrapped so that, on a terminal, its lines print above the bar (never inside a
        bar frame); in line mode it is ``log`` itself."""
        if self.lines:
            return log

        def write(message: str) -> None:
            with tqdm.external_write_mode(file=self.stream):
                log(message)
        return write

    def trial(self, number: int, state: str, *, metric: str = "accuracy", value: float | None = None,
              size_bytes: float | None = None, ratio: float | None = None, seconds: float | None = None,
              reason: str | None = None, complete: int = 0, front: int = 0, note: str | None = None) -> None:
        """One line for a finished trial (line mode only; the bar shows the counts); ``note``
        goes in brackets after the state (a promoted trial says which one it promotes)."""
        if not self.lines:
            return
        if state == "COMPLETE":
            what = f"val {metric} {value:.4f}, {size_bytes:,.0f} B ({ratio:.1f}x)"
        else:
            what = (reason or "no reason recorded").splitlines()[0][:160]
        took = f", {seconds:.1f} s" if seconds is not None else ""
        note = f" ({note})" if note else ""
        print(f"trial {number} {state}{note}: {what}{took} · {complete}/{self.total} complete, front {front}",
              file=self.stream, flush=True)

    def close(self) -> None:
        self.bar.close()


def _is_terminal(stream) -> bool:
    try:
        return bool(stream.isatty())
    except (AttributeError, ValueError):
        return False
