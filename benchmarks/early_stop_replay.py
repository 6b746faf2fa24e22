"""Replay the early-stopping rule over the fine-tune curves of plain searches.

Every trial of a plain search (no early stopping) records its validation accuracy
at each rung (user attr ``curve``). Replaying the rule over a search's trials in
completion order says, for each setting, which trials it would have stopped and
at which rung: the share of fine-tune steps it would have saved, and how many of
the stopped trials are on the search's final front (the rule should stop none).
A replay cannot show how the sampler would have moved had trials been stopped;
the efficiency benchmark (benchmarks/efficiency.py --rerun-stopped) checks that
on real searches.

It reads the plain searches of the efficiency benchmark, so run that first:

    .venv/bin/python benchmarks/early_stop_replay.py --studies digits lenet300
"""

from __future__ import annotations

import argparse
import itertools
import sys

from common import BENCH, markdown_table  # noqa: E402  (chdir to ROOT)

import optuna  # noqa: E402

from compresstune.search._early_stop import RungTable, StopRule  # noqa: E402
from compresstune.search._storage import load_study  # noqa: E402
from compresstune.search.pareto import front  # noqa: E402

MARGIN_SE = (2.0, 2.5)
RUNG_SLACK = (0.0, 0.25, 0.5, 1.0)
GRACE = (0.0, 0.25, 0.5)


def trials_of(study: optuna.Study) -> list[tuple[int, float, list, bool]]:
    """(number, size, curve, on the final front) of the fully fine-tuned trials, in completion order."""
    on_front = set(front(study)["number"])
    done = [t for t in study.get_trials(deepcopy=False) if t.state.name == "COMPLETE"
            and not t.user_attrs.get("rejected") and t.user_attrs.get("curve")]
    done.sort(key=lambda t: t.datetime_complete)
    return [(t.number, t.user_attrs["size_bytes"], t.user_attrs["curve"], t.number in on_front) for t in done]


def validation_size(config: dict) -> int:
    """Examples behind each rung accuracy: the study's validation split, loaded as the study does."""
    from compresstune.search.config import StudyConfig
    from compresstune.search._session import _call_factory

    data = StudyConfig.from_dict(config).data
    return len(_call_factory(data.factory, dict(data.kwargs), cache_dir=BENCH / "cache").val)


def replay(searches: list[list], rule: StopRule) -> tuple[int, int, int, int]:
    """(stopped trials, front trials among them, steps saved, steps in all) over the searches."""
    stopped = lost = saved = total = 0
    for trials in searches:
        table = RungTable()
        for number, size, curve, on_front in trials:
            total += rule.final_step
            for step, acc in curve:
                best = table.add(number, step=step, size_bytes=size, accuracy=acc)
                if rule.decide(table, key=number, step=step, size_bytes=size, accuracy=best) is not None:
                    stopped, lost, saved = stopped + 1, lost + on_front, saved + rule.final_step - step
                    break
    return stopped, lost, saved, total


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--studies", nargs="+", default=["digits", "lenet300"])
    args = p.parse_args(argv)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    for name in args.studies:
        folders = sorted((BENCH / "efficiency" / name).glob("plain-s*"))
        studies = [load_study(f) for f in folders if (f / "finished.json").exists()]
        if not studies:
            print(f"no finished plain searches in {BENCH / 'efficiency' / name}: run benchmarks/efficiency.py first",
                  file=sys.stderr)
            return 2
        attrs = studies[0].user_attrs
        final = int(attrs["config"]["finetune"]["steps"])
        n_val = validation_size(attrs["config"])
        searches = [trials_of(s) for s in studies]
        rows = []
        for mse, slack, grace in itertools.product(MARGIN_SE, RUNG_SLACK, GRACE):
            rule = StopRule(n_val=n_val, final_step=final, margin_se=mse, rung_slack=slack,
                            min_step=int(-(-grace * final // 1)))
            stopped, lost, saved, total = replay(searches, rule)
            rows.append([f"{mse:g}", f"{slack:g}", f"{grace:g}", stopped, lost, f"{saved / total:.1%}"])
        print(f"\n### {name}: {len(studies)} plain searches, {sum(map(len, searches))} trials, {final} steps\n")
        print(markdown_table(["margin_se", "rung_slack", "grace", "stopped", "of them on the final front",
                              "fine-tune steps saved"], rows))
    return 0


if __name__ == "__main__":
    sys.exit(main())
