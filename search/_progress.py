"""The progress line of a run: trials done, failures, current front size, elapsed
and remaining time. It draws the numbers the trial loop keeps; it reads no storage."""

from __future__ import annotations

import sys

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """A tqdm bar over COMPLETE trials.

    Example:
        >>> bar = Progress(10, done=2, enabled=False)
        >>> bar.show(complete=3, failed=1, front=2)
        >>> bar.bar.n
        3
    """

    def __init__(self, total: int, *, done: int = 0, enabled: bool = True, stream=sys.stderr) -> None:
        self.bar = tqdm(total=total, initial=min(done, total), disable=not enabled, file=stream,
                        unit="trial", dynamic_ncols=True, desc="trials",
                        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}<{remaining} {postfix}")

    def show(self, *, complete: int, failed: int, front: int) -> None:
        self.bar.set_postfix_str(f"failed {failed} · front {front}", refresh=False)
        delta = min(complete, self.bar.total) - self.bar.n
        if delta > 0:
            self.bar.update(delta)
        else:
            self.bar.refresh()

    def close(self) -> None:
        self.bar.close()
