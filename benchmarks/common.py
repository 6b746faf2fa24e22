"""Shared helpers of the benchmark scripts, and the baseline-checkpoint writer.

Every benchmark is a set of ordinary compresstune studies, each in its own
folder under ``runs/bench/...``; running a script again resumes them (only
missing trials run). Scripts change into the repository root first, so the
studies' relative data paths (``../shared/data/...``) resolve as documented.

Write a committed baseline checkpoint (see ``studies/checkpoints/README.md``)::

    nice -n 10 .venv/bin/python benchmarks/common.py checkpoint studies/cifar10_resnet20.yaml
"""

from __future__ import annotations

import argparse
import datetime as _dt
import inspect
import importlib
import math
import os
import platform
import sys
import tempfile
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Mapping, Sequence

ROOT = Path(__file__).resolve().parents[1]
os.chdir(ROOT)
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import optuna  # noqa: E402
import torch  # noqa: E402

from compresstune.search.config import StudyConfig, load_config, resolve_import  # noqa: E402

__all__ = ["ROOT", "BENCH", "log", "machine", "markdown_table", "run_study", "study_config", "today",
           "trials_table", "wilson", "write_checkpoint"]

BENCH = ROOT / "runs" / "bench"
SHARED_CACHE = BENCH / "cache"  # decoded data and trained baselines, shared by every benchmark study


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


def today() -> str:
    return _dt.date.today().isoformat()


def machine() -> str:
    """One line describing where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return (f"{os.cpu_count()} CPU cores ({cpu}), shared with other jobs; torch {torch.__version__} CPU, "
            f"1 torch thread per trial, optuna {optuna.__version__}, Python {platform.python_version()}")


def study_config(path: str | Path, *, name: str | None = None, data_kwargs: Mapping | None = None,
                 model_kwargs: Mapping | None = None, sections: Mapping[str, Mapping] | None = None,
                 **search: Any) -> StudyConfig:
    """A study YAML with sections patched key by key (``sections={"finetune": {"steps": 50}}``)
    and ``search.*`` fields replaced."""
    data = load_config(path).to_dict()
    if name is not None:
        data["name"] = name
    for section, patch in (sections or {}).items():
        data[section] = {**(data.get(section) or {}), **patch}
    if data_kwargs:
        data["data"]["kwargs"] = {**data["data"]["kwargs"], **data_kwargs}
    if model_kwargs:
        data["model"]["kwargs"] = {**data["model"]["kwargs"], **model_kwargs}
    return StudyConfig.from_dict(data).with_search(**search)


def _share_cache(out: Path) -> None:
    """``OUT/cache`` -> one shared folder, so each benchmark study does not retrain its baseline."""
    SHARED_CACHE.mkdir(parents=True, exist_ok=True)
    cache = out / "cache"
    out.mkdir(parents=True, exist_ok=True)
    if not cache.exists() and not cache.is_symlink():
        cache.symlink_to(SHARED_CACHE.resolve(), target_is_directory=True)


def run_study(config: StudyConfig, *, enqueue: Sequence[Callable[[Any], dict]] | None = None,
              quiet: bool = True) -> optuna.Study:
    """Run (or resume) one benchmark study in ``config.search.out``.

    ``enqueue(space) -> [params, ...]`` gives trials to queue first (once: a
    resumed study does not queue them again).
    """
    from compresstune.search._controller import _write_report, prepare
    from compresstune.search._local import run_local
    from compresstune.search._storage import RunLock

    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = Path(config.search.out).resolve()
    _share_cache(out)
    with RunLock(out):
        session = prepare(config, out, log=(lambda m: None) if quiet else log)
        if enqueue is not None and not session.study.user_attrs.get("bench_enqueued"):
            for params in enqueue(session.space):
                session.study.enqueue_trial(params, skip_if_exists=True)
            session.study.set_user_attr("bench_enqueued", True)
        run_local(session, progress=False)
        _write_report(session)
    return session.study


def trials_table(study: optuna.Study):
    from compresstune.search.report import trials_frame

    return trials_frame(study)


def wilson(errors: int, n: int, z: float = 1.96) -> tuple[float, float]:
    """Wilson score interval of a proportion ``errors / n``.

    Example:
        >>> [round(v, 4) for v in wilson(80, 10000)]
        [0.0064, 0.0099]
    """
    p = errors / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return centre - half, centre + half


def markdown_table(headers: Sequence[str], rows: Iterable[Sequence[Any]]) -> str:
    lines = ["| " + " | ".join(headers) + " |", "|" + "|".join("---" for _ in headers) + "|"]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


# -- committed baseline checkpoints ------------------------------------------------------------

_SUBSET_KWARGS = ("train_size", "test_size")


def _settings(fn: Callable, module, kwargs: Mapping) -> dict:
    """The settings dict ``baseline()`` compares with a checkpoint: every argument but the excluded ones."""
    bound = inspect.signature(fn).bind_partial(**kwargs)
    bound.apply_defaults()
    return {k: v for k, v in bound.arguments.items() if k not in module._NOT_SETTINGS}


def write_checkpoint(study_yaml: str | Path, *, half: bool = False) -> dict:
    """Train the study's baseline with the project's training code on the full
    training split and write ``studies/checkpoints/<study name>.pt``.

    The file holds the state dict (float16 when ``half``, to stay under 2 MB),
    the hashes of the validation rows it was trained beside, the settings, the
    training time and the validation / test accuracy of the weights as loaded
    back by ``baseline()``.
    """
    from compresstune.objectives import accuracy

    torch.set_num_threads(1)
    cfg = load_config(study_yaml)
    module = importlib.import_module(cfg.model.factory.split(":")[0])
    baseline_fn = resolve_import(cfg.model.factory)
    data_fn = resolve_import(cfg.data.factory)
    data_kwargs = {k: v for k, v in cfg.data.kwargs.items() if k not in _SUBSET_KWARGS}
    if "cache_dir" in inspect.signature(data_fn).parameters:
        data_kwargs["cache_dir"] = str(SHARED_CACHE)
    splits = data_fn(**data_kwargs)
    log(f"{cfg.name}: data {data_kwargs}: train {len(splits.train)}, val {len(splits.val)}, test {len(splits.test)}")
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        model = baseline_fn(data=splits, cache_dir=tmp, checkpoint=None, log=log, **cfg.model.kwargs)
        seconds = time.perf_counter() - t0
    state = {k: (v.half() if half and v.is_floating_point() else v).clone() for k, v in model.state_dict().items()}
    path = module.CHECKPOINTS / f"{cfg.name}.pt"
    path.parent.mkdir(parents=True, exist_ok=True)
    info = {"settings": _settings(baseline_fn, module, cfg.model.kwargs), "data": data_kwargs,
            "train_seconds": round(seconds, 1), "date": today(), "machine": machine(),
            "command": f"nice -n 10 .venv/bin/python benchmarks/common.py checkpoint {study_yaml}"
                       + (" --half" if half else ""),
            "float16": half}
    info["data"].pop("cache_dir", None)
    saved = {"state_dict": state, "val_keys": module.row_keys(splits.val.x), "info": info}
    torch.save(saved, path)
    again = baseline_fn(data=splits, cache_dir=tmp, checkpoint=str(path), log=log, **cfg.model.kwargs)
    info["val_accuracy"] = accuracy(again, splits.val, batch_size=500)
    info["test_accuracy"] = accuracy(again, splits.test, batch_size=500)
    torch.save(saved, path)
    log(f"wrote {path} ({path.stat().st_size:,} bytes): trained in {seconds:.0f} s, "
        f"val accuracy {info['val_accuracy']:.4f}, test accuracy {info['test_accuracy']:.4f}")
    return info


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    sub = p.add_subparsers(dest="command", required=True)
    ck = sub.add_parser("checkpoint", help="train a study's baseline and write studies/checkpoints/<name>.pt")
    ck.add_argument("study", nargs="+")
    ck.add_argument("--half", action="store_true", help="store float tensors as float16")
    args = p.parse_args(argv)
    for study in args.study:
        write_checkpoint(study, half=args.half)
    return 0


if __name__ == "__main__":
    sys.exit(main())
