"""The per-layer sensitivity scan on the real digits baseline: its JSON shape, the
cache, groups, the CLI subcommand and the config sections."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import torch

from compresstune.search.config import StudyConfig
from compresstune.errors import ConfigError
from compresstune.spaces import Space
from compresstune.objectives import evaluate as ct_evaluate
from compresstune.tasks import Classification
from compresstune.search._sensitivity import CACHE_FILE, format_table, load_or_scan, scan, units

LAYERS = ["conv1", "conv2", "fc1", "fc2"]


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    from studies import digits as mod

    cache = tmp_path_factory.getbasetemp() / "ct-digits-cache"
    cache.mkdir(exist_ok=True)
    splits = mod.data()
    return splits, mod.baseline(data=splits, cache_dir=cache)


def _config(out: Path | str = "runs/x", **sections) -> StudyConfig:
    return StudyConfig.from_dict({"name": "sens", "model": {"factory": "studies.digits:baseline"},
                                  "data": {"factory": "studies.digits:data"}, "search": {"out": str(out)},
                                  **sections})


def test_scan_has_the_documented_shape_and_leaves_the_model_alone(digits) -> None:
    splits, model = digits
    before = {k: v.clone() for k, v in model.state_dict().items()}
    cfg = _config(sensitivity={"examples": 200, "sparsity": [0.5, 0.9], "bits": [2, 4], "rank_fraction": [0.25, 0.75]})
    space = Space.from_config(cfg.space, model)
    table = scan(model, Classification.from_splits(splits), space, cfg.sensitivity, key="k", fingerprint="f")
    assert table["layers"] == LAYERS and table["members"] == {n: [n] for n in LAYERS}
    assert table["settings"] == ["sparsity 0.5", "sparsity 0.9", "bits 2", "bits 4", "rank 0.25", "rank 0.75"]
    assert table["knobs"][0] == ["sparsity", 0.5] and table["knobs"][-1] == ["rank_fraction", 0.75]
    assert table["examples"] == 200 and table["key"] == "k" and table["fingerprint"] == "f"
    assert len(table["drop"]) == len(table["accuracy"]) == 4
    assert all(len(row) == 6 for row in table["drop"])
    for accs, drops in zip(table["accuracy"], table["drop"]):
        for a, d in zip(accs, drops):
            assert (a is None) == (d is None)
            if a is not None:
                assert 0 <= a <= 1 and d == pytest.approx(table["baseline_accuracy"] - a)
    # conv1's weight is 16 x 9: rank 7 (0.75) would not make it smaller, so that cell is empty.
    assert table["drop"][0][5] is None and table["drop"][0][4] is not None
    # 90 % sparsity of the first conv hurts more than 8-bit-ish settings of the big fc1.
    assert table["drop"][0][1] > table["drop"][2][3]
    json.dumps(table)  # plain JSON
    assert all(torch.equal(v, before[k]) for k, v in model.state_dict().items())


def test_a_group_is_scanned_as_one_unit(digits) -> None:
    splits, model = digits
    cfg = _config(space={"groups": [{"name": "convs", "pattern": "conv*"}]},
                  sensitivity={"examples": 100, "sparsity": [0.9], "bits": [2], "rank_fraction": [0.5]})
    space = Space.from_config(cfg.space, model)
    assert [p for p, _ in units(space)] == ["convs", "fc1", "fc2"]
    table = scan(model, Classification.from_splits(splits), space, cfg.sensitivity)
    assert table["layers"] == ["convs", "fc1", "fc2"] and table["members"]["convs"] == ["conv1", "conv2"]


def test_channel_groups_get_channel_cells_when_structured_is_searched(digits) -> None:
    from compresstune import CompressionPlan, LayerPlan, apply
    from compresstune.task import measure

    splits, model = digits
    cfg = _config(space={"structured": [False, True]},
                  sensitivity={"examples": 100, "sparsity": [0.5], "bits": [4], "rank_fraction": [0.5]})
    space = Space.from_config(cfg.space, model)
    task = Classification.from_splits(splits)
    table = scan(model, task, space, cfg.sensitivity)
    assert table["settings"][-3:] == ["channels 0.25", "channels 0.5", "channels 0.75"]
    row = dict(zip(table["settings"], table["drop"][table["layers"].index("conv1")]))
    from compresstune.search._sensitivity import _sampled

    sample = _sampled(task, 100)  # the scan's stratified sample
    alone = measure(sample, apply(model, CompressionPlan({"conv1": LayerPlan(structured=0.5)})), "val", examples=100)[0]
    assert row["channels 0.5"] == pytest.approx(table["baseline_accuracy"] - alone)
    assert table["drop"][table["layers"].index("fc2")][-1] is None  # the output layer leads no group
    plain = scan(model, task, Space.from_config({}, model), cfg.sensitivity)
    assert not any(s.startswith("channels") for s in plain["settings"])  # not searched: not scanned


def test_the_scan_is_cached_by_key(digits, tmp_path: Path) -> None:
    splits, model = digits
    cfg = _config(tmp_path, sensitivity={"examples": 60, "sparsity": [0.9], "bits": [2], "rank_fraction": [0.5]})
    space = Space.from_config(cfg.space, model)
    base = {"val_accuracy": 0.97, "packed_bytes": 1, "reference_bytes": 2}
    first, cached = load_or_scan(cfg, tmp_path, model, Classification.from_splits(splits), space, base)
    assert not cached and json.loads((tmp_path / CACHE_FILE).read_text()) == first
    again, cached = load_or_scan(cfg, tmp_path, model, Classification.from_splits(splits), space, base)
    assert cached and again == first
    # Another baseline or other levels: another key, scanned again.
    other, cached = load_or_scan(cfg, tmp_path, model, Classification.from_splits(splits), space, {**base, "val_accuracy": 0.5})
    assert not cached and other["key"] != first["key"]
    wider = _config(tmp_path, sensitivity={"examples": 60, "sparsity": [0.5, 0.9], "bits": [2], "rank_fraction": [0.5]})
    table, cached = load_or_scan(wider, tmp_path, model, Classification.from_splits(splits), space, base)
    assert not cached and len(table["settings"]) == 4
    (tmp_path / CACHE_FILE).write_text("{not json")
    assert load_or_scan(cfg, tmp_path, model, Classification.from_splits(splits), space, base)[1] is False
    assert load_or_scan(cfg, tmp_path, model, Classification.from_splits(splits), space, base, force=True)[1] is False


def test_format_table_shows_dashes_for_empty_cells() -> None:
    text = format_table({"layers": ["a", "b"], "settings": ["bits 2"], "drop": [[0.5], [None]], "examples": 3,
                         "baseline_accuracy": 1.0})
    assert text.splitlines()[1:] == ["layer  bits 2", "a      0.500", "b      -"]


def test_cli_sensitivity_prints_the_table_and_writes_the_json(digits, tmp_path: Path, tmp_path_factory,
                                                             capsys) -> None:
    from compresstune.cli import main

    out = tmp_path / "out"
    out.mkdir()
    (out / "cache").symlink_to(tmp_path_factory.getbasetemp() / "ct-digits-cache", target_is_directory=True)
    study = tmp_path / "s.yaml"
    study.write_text(textwrap.dedent(f"""\
        name: s
        model: {{factory: "studies.digits:baseline"}}
        data: {{factory: "studies.digits:data"}}
        search: {{out: "{out}"}}
        sensitivity: {{examples: 50, sparsity: [0.9], bits: [2], rank_fraction: [0.5]}}
        """))
    assert main(["sensitivity", str(study)]) == 0
    text = capsys.readouterr().out
    assert "layer  sparsity 0.9  bits 2  rank 0.5" in text and "conv1" in text
    assert f"sensitivity: {out / CACHE_FILE}" in text
    data = json.loads((out / CACHE_FILE).read_text())
    assert set(data) >= {"layers", "settings", "drop", "accuracy", "key", "baseline_accuracy", "examples"}
    assert main(["sensitivity", str(study)]) == 0 and "(cached)" in capsys.readouterr().out


@pytest.mark.parametrize("section, message", [
    ({"sensitivity": {"bits": [32]}}, "`sensitivity.bits`: each bits value must be in"),
    ({"sensitivity": {"sparsity": [1.0]}}, "`sensitivity.sparsity`: each sparsity value must be in (0, 1)"),
    ({"sensitivity": {"seed_ratios": [0.5]}}, "`sensitivity.seed_ratios`: each seed_ratios value must be > 1"),
    ({"sensitivity": {"examples": 0}}, "`sensitivity.examples`"),
    ({"sensitivity": {"enable": True}}, "did you mean `enabled`"),
    ({"early_stopping": {"margin_se": -1}}, "`early_stopping.margin_se`"),
    ({"early_stopping": {"enabled": 1}}, "`early_stopping.enabled`"),
    ({"constraints": {"max_bops": 0}}, "`constraints.max_bops`"),
])
def test_new_config_fields_are_validated_by_name(section, message) -> None:
    with pytest.raises(ConfigError) as err:
        _config(**section)
    assert message in str(err.value)


def test_defaults_and_fingerprint() -> None:
    cfg = _config()
    assert cfg.sensitivity.enabled and cfg.sensitivity.seed_ratios == [4.0, 8.0, 16.0, 32.0, 64.0]
    assert not cfg.early_stopping.enabled and cfg.early_stopping.margin_se == 2.0
    assert cfg.constraints.max_bops is None
    # Search-efficiency settings do not change what a trial measures: same study.
    other = _config(sensitivity={"enabled": False}, early_stopping={"enabled": True})
    assert other.fingerprint() == cfg.fingerprint()
    # An unset bops budget keeps the fingerprints of studies made before the field existed.
    assert "max_bops" not in cfg.fingerprint_data()["constraints"]
    assert _config(constraints={"max_bops": 1e6}).fingerprint() != cfg.fingerprint()


def test_a_validation_split_sorted_by_class_is_scanned_like_a_shuffled_one(digits) -> None:
    import torch

    from compresstune.data import Split, Splits

    splits, model = digits
    order = torch.argsort(splits.val.y, stable=True)
    shuffled = torch.randperm(len(splits.val.y), generator=torch.Generator().manual_seed(1))
    cfg = _config(sensitivity={"examples": 240, "sparsity": [0.9], "bits": [2], "rank_fraction": [0.25]})
    space = Space.from_config(cfg.space, model)
    tables, logs = [], []
    for idx in (order, shuffled):
        val = Split(splits.val.x[idx], splits.val.y[idx])
        task = Classification.from_splits(Splits(splits.train, val, splits.test, splits.num_classes, "digits"))
        whole = ct_evaluate(model, task)
        tables.append(scan(model, task, space, cfg.sensitivity, whole=whole, log=logs.append))
    sorted_, shuffled_ = tables
    assert sorted_["examples"] == shuffled_["examples"] == 240 and sorted_["sample"].startswith("stratified")
    # The same picture within noise (binomial SE of a drop on 240 rows is about 0.03).
    for a, b in zip(sum(sorted_["drop"], []), sum(shuffled_["drop"], [])):
        assert (a is None) == (b is None) and (a is None or abs(a - b) < 0.12), (sorted_["drop"], shuffled_["drop"])
    assert abs(sorted_["baseline_accuracy"] - sorted_["baseline_whole"]) < 0.05
    assert sorted_["differs"] is False and not [m for m in logs if "warning" in m]


class _SortedDigits(torch.utils.data.Dataset):
    """A map-style dataset in class order that says its labels (``targets``), as torchvision's do."""

    def __init__(self, x, y, *, say_labels: bool) -> None:
        order = torch.argsort(y, stable=True)
        self.x, self.y = x[order], y[order]
        if say_labels:
            self.targets = self.y.tolist()

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i):
        return self.x[i], self.y[i]


class _Stream(torch.utils.data.IterableDataset):
    def __init__(self, x, y) -> None:
        self.x, self.y = x, y

    def __iter__(self):
        return iter(zip(self.x, self.y))


@pytest.mark.parametrize("say_labels", [True, False])
def test_a_dataloader_over_a_dataset_in_class_order_is_sampled_too(digits, say_labels) -> None:
    from torch.utils.data import DataLoader

    splits, model = digits
    val = DataLoader(_SortedDigits(splits.val.x, splits.val.y, say_labels=say_labels), batch_size=50)
    task = Classification((splits.train.x, splits.train.y), val)
    cfg = _config(sensitivity={"examples": 240, "sparsity": [0.9], "bits": [], "rank_fraction": []})
    table = scan(model, task, Space.from_config(cfg.space, model), cfg.sensitivity, whole=ct_evaluate(model, task))
    assert table["examples"] == 240
    assert table["sample"] == ("stratified random (seed 0)" if say_labels else "random (seed 0)")
    seen = torch.cat([y for _, y in task.val_sample(240).batches("val")])
    counts = torch.bincount(seen, minlength=10)
    assert len(seen) == 240 and (counts > 0).all()  # every class, not the first ones only
    if say_labels:
        share = torch.bincount(splits.val.y, minlength=10).double() * 240 / len(splits.val.y)
        assert (counts.double() - share).abs().max() < 1.0  # in proportion to the split
    assert abs(table["baseline_accuracy"] - table["baseline_whole"]) < 0.05


def test_an_iterable_that_cannot_be_indexed_is_read_from_its_start(digits) -> None:
    from torch.utils.data import DataLoader

    splits, model = digits
    task = Classification((splits.train.x, splits.train.y), DataLoader(_Stream(splits.val.x, splits.val.y),
                                                                      batch_size=50))
    assert task.val_sample(100) is None
    cfg = _config(sensitivity={"examples": 100, "sparsity": [0.9], "bits": [], "rank_fraction": []})
    assert scan(model, task, Space.from_config(cfg.space, model), cfg.sensitivity)["sample"] == "first examples"


def test_a_sample_unlike_the_whole_split_is_warned_about(digits) -> None:
    splits, model = digits
    cfg = _config(sensitivity={"examples": 100, "sparsity": [0.5], "bits": [], "rank_fraction": []})
    logs = []
    table = scan(model, Classification.from_splits(splits), Space.from_config(cfg.space, model), cfg.sensitivity,
                 whole=0.2, log=logs.append)
    assert table["differs"] is True and table["baseline_whole"] == 0.2
    assert any("differs from the whole validation split's (0.2000) by more than two standard errors" in m for m in logs)
