"""The progress line of a run: trials done, failures, current front size, elapsed
and remaining time."""

from __future__ import annotations

import sys
import time

from tqdm import tqdm

__all__ = ["Progress"]


class Progress:
    """A tqdm bar over COMPLETE trials that reads its numbers from the study."""

    def __init__(self, study, total: int, *, enabled: bool = True, stream=sys.stderr) -> None:
        from compresstune.search._controller import counts

        self._counts = counts
        self.study = study
        self.start = time.perf_counter()
        done = counts(study)["complete"]
        self.bar = tqdm(total=total, initial=min(done, total), disable=not enabled, file=stream,
                        unit="trial", dynamic_ncols=True, desc="trials",
                        bar_format="{desc} {n_fmt}/{total_fmt} |{bar:20}| {elapsed}<{remaining} {postfix}")
        self._refresh()

    def _refresh(self) -> None:
        c = self._counts(self.study)
        self.bar.set_postfix_str(f"failed {c['failed']} · front {c['front']}")
        delta = min(c["complete"], self.bar.total) - self.bar.n
        if delta > 0:
            self.bar.update(delta)

    def update(self) -> None:
        self._refresh()

    def close(self) -> None:
        self._refresh()
        self.bar.close()
