"""CI smoke: every study YAML in studies/ runs end to end from its file.

Each study is loaded with ``load_config(path)`` exactly as ``compresstune run``
does, then shrunk: 2 trials, a fine-tune of 2 steps, and random subsets of the
data through the study modules' ``train_size`` / ``val_size`` / ``test_size``
kwargs. The model settings are left as they are, so the studies with a committed
baseline checkpoint must load it (no baseline is trained). A broken loader,
study module, checkpoint or YAML file fails here in seconds. The MNIST, CIFAR-10
and SST-2 studies need ``../shared/data`` (relative to the repository root) and
are skipped, with the reason, when it is missing.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from optuna.trial import TrialState

from compresstune.cli import main as cli_main
from compresstune.search.config import StudyConfig, load_config

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"

# study file stem -> (data it needs under ../shared/data, data kwargs that shrink it,
#                     whether the baseline comes from studies/checkpoints/)
SMOKE = {
    "digits": (None, {}, False),
    "mnist_lenet300": ("mnist", {"train_size": 512, "val_size": 300, "test_size": 200}, True),
    "mnist_lenet5": ("mnist", {"train_size": 256, "val_size": 300, "test_size": 200}, True),
    "cifar10_resnet20": ("cifar10-jpg.tar.gz", {"train_size": 128, "val_size": 100, "test_size": 100}, True),
    "cifar10_resnet56": ("cifar10-jpg.tar.gz", {"train_size": 128, "val_size": 100, "test_size": 100}, True),
    "sst2_transformer": ("sst2", {"train_size": 256, "val_size": 200, "test_size": 100}, True),
}
TINY_FINETUNE = {"steps": 2, "batch_size": 16, "eval_every": 2, "eval_batch_size": 256}
# Decoding the CIFAR-10 JPEGs takes 10-30 s: keep the decoded arrays between local runs.
DECODED = ROOT / ".cache" / "smoke-data"


def test_every_study_file_is_covered():
    assert sorted(p.stem for p in (ROOT / "studies").glob("*.yaml")) == sorted(SMOKE)


def _tiny(cfg: StudyConfig, data_kwargs: dict, out: Path) -> StudyConfig:
    data = cfg.to_dict()
    data["finetune"] = {**data["finetune"], **TINY_FINETUNE}
    data["data"]["kwargs"] = {**data["data"]["kwargs"], **data_kwargs}
    return StudyConfig.from_dict(data).with_search(trials=2, out=str(out), seed=0)


@pytest.mark.parametrize("name", list(SMOKE))
def test_study_runs_from_its_file(name, tmp_path, monkeypatch):
    needs, data_kwargs, from_checkpoint = SMOKE[name]
    if needs is not None and not (SHARED / needs).exists():
        pytest.skip(f"{SHARED / needs} not found: the {name} study needs the shared data (see shared/data/README.md)")
    monkeypatch.chdir(ROOT)  # relative data paths in study files resolve against the current directory
    cfg = _tiny(load_config(ROOT / "studies" / f"{name}.yaml"), data_kwargs, tmp_path / name)
    cache = tmp_path / name / "cache"
    cache.mkdir(parents=True)
    for npz in DECODED.glob("cifar10-*.npz"):
        (cache / npz.name).symlink_to(npz)

    from compresstune.search import run

    lines: list[str] = []
    study, front = run(cfg, progress=False, log=lines.append)

    trials = study.get_trials(deepcopy=False)
    fails = [t.user_attrs.get("fail_reason") for t in trials if t.state == TrialState.FAIL]
    assert not fails, fails
    done = [t for t in trials if t.state == TrialState.COMPLETE]
    assert len(done) == 2
    for t in done:
        assert set(t.user_attrs["timings"]) >= {"apply_s", "finetune_s", "eval_s", "total_s"}
        assert 0.0 <= t.user_attrs["val_accuracy"] <= 1.0 and t.user_attrs["ratio"] > 0
    assert (tmp_path / name / "report.html").is_file(), lines
    trained = [p.name for p in cache.glob("*.pt")]
    if from_checkpoint:
        assert trained == [], f"{name}: the baseline was trained ({trained}) instead of loaded from studies/checkpoints"
    for npz in cache.glob("cifar10-*.npz"):
        if not npz.is_symlink():
            DECODED.mkdir(parents=True, exist_ok=True)
            shutil.copy2(npz, DECODED / npz.name)


def test_missing_data_fails_with_the_path(tmp_path, monkeypatch, capsys):
    # Run from elsewhere: the study's relative data path resolves against the current directory.
    monkeypatch.chdir(tmp_path)
    code = cli_main(["run", str(ROOT / "studies" / "mnist_lenet300.yaml"), "--trials", "1", "--no-progress"])
    err = capsys.readouterr().err
    assert code == 2
    assert "MNIST folder not found" in err and "shared/data/mnist" in err, err


# --------------------------------------------------------------------------- committed checkpoints


def _mnist_module():
    import importlib
    import sys

    if str(ROOT) not in sys.path:
        sys.path.insert(0, str(ROOT))
    return importlib.import_module("studies.mnist")


def _fake_mnist(seed: int):
    import torch

    from compresstune.data import Split, Splits

    g = torch.Generator().manual_seed(seed)
    part = lambda n: Split(torch.randint(0, 256, (n, 1, 28, 28), dtype=torch.uint8, generator=g),  # noqa: E731
                           torch.arange(n) % 10)
    return Splits(part(64), part(16), part(16), 10, "mnist")


def test_checkpoint_is_used_only_when_settings_and_validation_match(tmp_path, monkeypatch):
    import torch

    mnist = _mnist_module()
    monkeypatch.setattr(mnist, "CHECKPOINTS", tmp_path)
    d = _fake_mnist(0)
    trained = mnist.baseline(data=d, cache_dir=tmp_path / "cache", epochs=1, checkpoint=None)
    settings = {"arch": "lenet300", "epochs": 1, "lr": 1e-3, "batch_size": 128, "weight_decay": 0.0,
                "optimizer": "adam", "schedule": "constant", "momentum": 0.9, "keep_best": False, "seed": 0}
    torch.save({"state_dict": {k: v + 1 for k, v in trained.state_dict().items()},
                "val_keys": mnist.row_keys(d.val.x), "info": {"settings": settings, "test_accuracy": 0.5}},
               tmp_path / "mnist_lenet300.pt")
    lines: list[str] = []
    loaded = mnist.baseline(data=d, cache_dir=tmp_path / "cache", epochs=1, log=lines.append)
    assert lines[0].startswith("loaded baseline checkpoint")
    assert torch.equal(loaded.fc1.weight, trained.fc1.weight + 1)
    # A subset of the same validation rows still matches (smoke runs use one).
    sub = type(d)(d.train, type(d.val)(d.val.x[:5], d.val.y[:5]), d.test, 10, "mnist")
    assert torch.equal(mnist.baseline(data=sub, cache_dir=tmp_path / "cache", epochs=1).fc1.weight,
                       trained.fc1.weight + 1)

    lines.clear()  # other settings: trained (here: loaded from the ordinary cache) instead
    other = mnist.baseline(data=d, cache_dir=tmp_path / "cache", epochs=2, log=lines.append)
    assert "trained with" in lines[0] and not torch.equal(other.fc1.weight, trained.fc1.weight + 1)
    lines.clear()  # another validation cut: its rows may have been training rows of the checkpoint
    mnist.baseline(data=_fake_mnist(1), cache_dir=tmp_path / "cache", epochs=1, log=lines.append)
    assert "validation split differs" in lines[0]
    with pytest.raises(ValueError, match="does not match: the validation split differs"):
        mnist.baseline(data=_fake_mnist(1), cache_dir=tmp_path / "cache", epochs=1,
                       checkpoint=tmp_path / "mnist_lenet300.pt")
    with pytest.raises(FileNotFoundError, match="baseline checkpoint not found"):
        mnist.baseline(data=d, cache_dir=tmp_path / "cache", epochs=1, checkpoint=tmp_path / "absent.pt")
