"""The study config: schema, messages, import paths, fingerprint, diff."""

import sys
import textwrap
import uuid

import pytest

from compresstune.search.config import (
    FactorySpec,
    StudyConfig,
    config_diff,
    ensure_import_paths,
    load_config,
    resolve_import,
)
from compresstune.errors import ConfigError
from compresstune.plan import ALLOWED_BITS

BASE = {"model": {"factory": "pkg.mod:baseline"}, "data": {"factory": "pkg.mod:data"}}

STUDY_MODULE = '''
def data(*, seed=0):
    return {"seed": seed}

def data_with_cache(*, cache_dir, seed=0):
    return {"seed": seed, "cache_dir": cache_dir}

def baseline(*, data, cache_dir, width=4):
    return ("model", data, cache_dir, width)

NOT_CALLABLE = 3
'''


def _cfg(**sections):
    return StudyConfig.from_dict({**BASE, **sections})


def _error(**sections) -> str:
    with pytest.raises(ConfigError) as info:
        _cfg(**sections)
    return str(info.value)


@pytest.fixture
def study_dir(tmp_path, monkeypatch):
    """``<tmp>/<pkg>/mod.py`` and a helper writing ``<tmp>/<pkg>/<name>.yaml``; cwd elsewhere."""
    monkeypatch.setattr(sys, "path", list(sys.path))  # ensure_import_paths edits it
    pkg = f"ctstudies_{uuid.uuid4().hex[:8]}"
    folder = tmp_path / "proj" / pkg
    folder.mkdir(parents=True)
    (folder / "__init__.py").write_text("")
    (folder / "mod.py").write_text(STUDY_MODULE)
    elsewhere = tmp_path / "cwd"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)

    def write(text: str, name: str = "demo"):
        path = folder / f"{name}.yaml"
        path.write_text(textwrap.dedent(text.replace("PKG", pkg)))
        return path

    yield write
    for name in [m for m in sys.modules if m.startswith(pkg)]:
        del sys.modules[name]


# -- schema and defaults ---------------------------------------------------------------

def test_defaults_match_the_documented_schema():
    cfg = _cfg().to_dict()
    assert cfg["name"] == "study"
    assert cfg["space"]["include"] == ["*"] and cfg["space"]["exclude"] == [] and cfg["space"]["types"] is None
    assert cfg["space"]["sparsity"] == {"low": 0.0, "high": 0.95, "step": None, "log": False}
    assert cfg["space"]["bits"] == [2, 3, 4, 5, 6, 8, 16, 32]
    assert cfg["space"]["rank_fraction"] == [0.25, 0.5, 1.0]
    assert cfg["space"]["structured"] == [False]
    assert cfg["space"]["temperature"] == {"low": 1.0, "high": 8.0, "step": None, "log": True}
    assert cfg["space"]["alpha"] == {"low": 0.0, "high": 1.0, "step": None, "log": False}
    assert cfg["objectives"] == ["accuracy", "size"]
    assert cfg["finetune"] == {"steps": 200, "batch_size": 64, "lr": 0.001, "optimizer": "adam", "eval_every": 50,
                               "eval_batch_size": 512, "weight_decay": 0.0, "batchnorm": "frozen"}
    assert cfg["constraints"] == {"max_accuracy_drop": 0.02, "max_metric_drop": None, "max_relative_drop": None,
                                  "max_size_bytes": None, "min_ratio": None, "max_bops": None, "max_macs": None,
                                  "max_latency_ms": None, "max_onnx_bytes": None, "max_onnx_latency_ms": None}
    assert cfg["activation_bits"] == 32
    assert cfg["latency"] == {"batch_size": 1, "repeats": 30, "warmup": 5}
    assert cfg["resources"] == {"device": "auto", "cpus_per_trial": 1.0, "gpus_per_trial": 0.0}
    assert cfg["search"] == {"sampler": "tpe", "trials": 40, "seed": 0, "storage": None, "out": "runs/study",
                             "max_failures": 10, "workers": 0, "address": None}


def test_round_trips_through_to_dict():
    cfg = _cfg(space={"overrides": [{"type": "conv2d", "bits": [8, 4]}], "groups": [{"name": "g", "pattern": "a.*"}]})
    assert StudyConfig.from_dict(cfg.to_dict()) == cfg


def test_config_is_frozen():
    with pytest.raises(Exception):
        _cfg().finetune.steps = 5  # type: ignore[misc]


def test_shorthands_for_knobs():
    space = _cfg(space={"sparsity": 0.5, "bits": 8, "rank_fraction": 0.5, "structured": True,
                        "temperature": 2, "alpha": 0.25}).space
    assert space.sparsity.fixed and space.sparsity.low == 0.5
    assert (space.bits, space.rank_fraction, space.structured) == ([8], [0.5], [True])
    assert space.temperature.fixed and space.alpha.low == 0.25
    assert _cfg(space={"rank_fraction": None}).space.rank_fraction == [1.0]  # never factorised
    assert _cfg(space={"bits": [8, 4, 8]}).space.bits == [4, 8]


def test_override_rank_fraction_absent_inherits_but_null_means_never():
    overrides = _cfg(space={"overrides": [{"name": "a", "bits": 8}, {"name": "b", "rank_fraction": None}]}).space.overrides
    assert overrides[0].rank_fraction is None
    assert overrides[1].rank_fraction == [1.0]


def test_objectives_are_put_in_canonical_order():
    assert _cfg(objectives=["bops", "size", "accuracy"]).objectives == ["accuracy", "size", "bops"]


# -- messages ---------------------------------------------------------------------------

@pytest.mark.parametrize("sections, expected", [
    ({"finetune": {"stepz": 3}}, "unknown key `finetune.stepz` — did you mean `steps`?"),
    ({"modle": {}}, "unknown key `modle` — did you mean `model`?"),
    ({"space": {"overrides": [{"name": "x", "bitz": 8}]}}, "unknown key `space.overrides[0].bitz` — did you mean `bits`?"),
    ({"space": {"sparsity": {"low": 0, "hi": 0.5}}}, "unknown key `space.sparsity.hi` — did you mean `high`?"),
    ({"search": {"sampeler": "tpe"}}, "unknown key `search.sampeler` — did you mean `sampler`?"),
])
def test_unknown_keys_get_a_did_you_mean(sections, expected):
    msg = _error(**sections)
    assert expected in msg
    assert "allowed keys:" in msg


def test_unknown_key_without_close_match_lists_allowed_keys():
    msg = _error(finetune={"zzzzzz": 1})
    assert "unknown key `finetune.zzzzzz` (allowed keys: steps, batch_size" in msg


@pytest.mark.parametrize("sections, field, value_and_allowed", [
    ({"space": {"bits": [4, 9]}}, "`space.bits`", f"`bits` must be one of {list(ALLOWED_BITS)}; got 9"),
    ({"space": {"overrides": [{"type": "linear", "bits": 1}]}}, "`space.overrides[0].bits`", "got 1"),
    ({"space": {"bits": True}}, "`space.bits[0]`", "not a boolean; got True"),
    ({"space": {"sparsity": {"low": 0.0, "high": 1.0}}}, "`space.sparsity`", "`high` must be in [0, 1); got 1"),
    ({"space": {"sparsity": -0.1}}, "`space.sparsity`", "`low` must be in [0, 1); got -0.1"),
    ({"space": {"rank_fraction": [0.0, 0.5]}}, "`space.rank_fraction`", "must be in (0, 1]; got 0.0"),
    ({"space": {"rank_fraction": 1.5}}, "`space.rank_fraction`", "must be in (0, 1]; got 1.5"),
    ({"space": {"temperature": {"low": 0.0, "high": 4.0}}}, "`space.temperature`", "`low` must be in (0, inf]"),
    ({"space": {"alpha": 2}}, "`space.alpha`", "`low` must be in [0, 1]; got 2"),
    ({"search": {"sampler": "cmaes"}}, "`search.sampler`", "'tpe', 'nsga2', 'gp' or 'random' (got 'cmaes')"),
    ({"finetune": {"steps": -1}}, "`finetune.steps`", "greater than or equal to 0 (got -1)"),
    ({"finetune": {"optimizer": "lion"}}, "`finetune.optimizer`", "'adam' or 'sgd' (got 'lion')"),
    ({"activation_bits": 1}, "`activation_bits`", "(got 1)"),
    ({"objectives": ["accuracy"]}, "`objectives`", "must include accuracy and size"),
    ({"objectives": ["accuracy", "size", "latency", "bops"]}, "`objectives`", "at most one third objective"),
    ({"space": {"overrides": [{"type": "linear", "name": "fc", "bits": 8}]}}, "`space.overrides[0]`",
     "exactly one selector"),
    ({"space": {"overrides": [{"pattern": "fc*"}]}}, "`space.overrides[0]`", "sets no knob"),
    ({"space": {"overrides": [{"pattern": "re:(", "bits": 8}]}}, "`space.overrides[0].pattern`", "invalid regular"),
    ({"space": {"groups": [{"name": "a/b", "pattern": "x"}]}}, "`space.groups[0].name`", "got 'a/b'"),
    ({"space": {"groups": [{"name": "g", "pattern": "x"}, {"name": "g", "pattern": "y"}]}}, "`space.groups`",
     "unique"),
    ({"model": {"factory": "no_colon"}}, "`model.factory`", "'package.module:function'; got 'no_colon'"),
    ({"name": "has space"}, "`name`", "got 'has space'"),
])
def test_messages_name_the_field_the_value_and_what_is_allowed(sections, field, value_and_allowed):
    msg = _error(**sections)
    assert field in msg
    assert value_and_allowed in msg


def test_all_problems_are_reported_at_once():
    msg = _error(finetune={"steps": -1, "lr": 0}, search={"trials": 0})
    assert msg.count("\n  - ") == 3


def test_missing_sections_are_named():
    with pytest.raises(ConfigError, match="`model` is required"):
        StudyConfig.from_dict({"data": BASE["data"]})
    with pytest.raises(ConfigError, match="must be a mapping"):
        StudyConfig.from_dict(["model"])


# -- import paths -------------------------------------------------------------------------

def test_resolve_import_finds_dotted_attributes():
    import os.path

    assert resolve_import("os.path:join") is os.path.join
    assert resolve_import("os:path.join") is os.path.join


def test_missing_attribute_names_module_and_attribute():
    with pytest.raises(ConfigError, match=r"module 'os.path' has no attribute 'jion'; did you mean 'join'"):
        resolve_import("os.path:jion")


def test_missing_module_names_it_and_explains_sys_path():
    with pytest.raises(ConfigError) as info:
        resolve_import("studiez.digits:baseline")
    msg = str(info.value)
    assert "cannot import module 'studiez.digits'" in msg
    assert "is the folder on sys.path? compresstune adds the current directory and the study file's parent" in msg


def test_import_error_inside_the_module_is_not_blamed_on_the_path(tmp_path, monkeypatch):
    monkeypatch.syspath_prepend(str(tmp_path))
    name = f"ctbroken_{uuid.uuid4().hex[:8]}"
    (tmp_path / f"{name}.py").write_text("import not_a_real_dependency_xyz\n")
    with pytest.raises(ConfigError, match=rf"importing module '{name}' failed: No module named 'not_a_real"):
        resolve_import(f"{name}:f")


def test_ensure_import_paths_adds_cwd_parent_and_grandparent(tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "path", list(sys.path))
    monkeypatch.chdir(tmp_path)
    study = tmp_path / "a" / "studies" / "x.yaml"
    added = ensure_import_paths(study)
    for folder in (tmp_path, tmp_path / "a", tmp_path / "a" / "studies"):
        assert str(folder.resolve()) in sys.path
    assert ensure_import_paths(study) == []  # idempotent
    assert len(added) == 3


def test_factory_call_passes_context_only_when_accepted(study_dir):
    path = study_dir("""
        model: {factory: "PKG.mod:baseline", kwargs: {width: 8}}
        data: {factory: "PKG.mod:data", kwargs: {seed: 3}}
    """)
    cfg = load_config(path)
    assert cfg.data.call(cache_dir="c") == {"seed": 3}
    assert cfg.model.call(data="d", cache_dir="c") == ("model", "d", "c", 8)
    spec = FactorySpec(factory=cfg.data.factory.replace(":data", ":data_with_cache"))
    assert spec.call(cache_dir="c") == {"seed": 0, "cache_dir": "c"}


# -- load_config --------------------------------------------------------------------------------

def test_load_config_defaults_name_and_out_and_applies_overrides(study_dir):
    path = study_dir("""
        model: {factory: "PKG.mod:baseline"}
        data: {factory: "PKG.mod:data"}
        search: {trials: 10}
    """, name="my_study")
    cfg = load_config(path)
    assert cfg.name == "my_study"
    assert cfg.search.out == "runs/my_study" and cfg.search.trials == 10
    again = load_config(path, trials=80, out="elsewhere", storage="sqlite:///x.db", sampler="random", seed=None,
                        workers=2, address="auto")
    assert (again.search.trials, again.search.out, again.search.sampler) == (80, "elsewhere", "random")
    assert again.search.seed == 0  # None means "not given"
    assert (again.search.storage, again.search.workers, again.search.address) == ("sqlite:///x.db", 2, "auto")
    with pytest.raises(ConfigError, match="unknown search override `trails` — did you mean `trials`"):
        load_config(path, trails=3)
    with pytest.raises(ConfigError, match="`search.trials`"):
        load_config(path, trials=0)


def test_load_config_reports_bad_factories_before_any_compute(study_dir):
    cases = [
        ('"PKG.mod:nope"', "module 'PKG.mod' has no attribute 'nope'"),
        ('"PKG.mood:baseline"', "cannot import module 'PKG.mood'"),
        ('"PKG.mod:NOT_CALLABLE"', "is a int, not a callable"),
    ]
    for factory, expected in cases:
        path = study_dir(f"""
            model: {{factory: {factory}}}
            data: {{factory: "PKG.mod:data"}}
        """)
        with pytest.raises(ConfigError) as info:
            load_config(path)
        pkg = path.parent.name
        assert expected.replace("PKG", pkg) in str(info.value)


def test_load_config_checks_factory_kwargs(study_dir):
    path = study_dir("""
        model: {factory: "PKG.mod:baseline", kwargs: {widht: 3}}
        data: {factory: "PKG.mod:data"}
    """)
    with pytest.raises(ConfigError, match=r"`model.factory` .* cannot be called with .*widht"):
        load_config(path)
    path = study_dir("""
        model: {factory: "PKG.mod:baseline"}
        data: {factory: "PKG.mod:data", kwargs: {cache_dir: x}}
    """)
    with pytest.raises(ConfigError, match=r"`data.kwargs` must not set \['cache_dir'\]"):
        load_config(path)
    assert load_config(path, check_imports=False).data.kwargs == {"cache_dir": "x"}


@pytest.mark.parametrize("text, expected", [
    ("model: [unclosed", "is not valid YAML"),
    ("- a\n- b\n", "must hold a mapping"),
    ("", "must hold a mapping"),
])
def test_load_config_rejects_malformed_files(tmp_path, text, expected):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError, match=expected):
        load_config(path)


def test_load_config_missing_file(tmp_path):
    with pytest.raises(ConfigError, match="study file not found"):
        load_config(tmp_path / "nope.yaml")


def test_yaml_exponent_floats_are_read(study_dir):
    # PyYAML reads `1e-3` as a string; it must still be accepted as a number.
    path = study_dir("""
        model: {factory: "PKG.mod:baseline"}
        data: {factory: "PKG.mod:data"}
        finetune: {lr: 1e-3}
    """)
    assert load_config(path).finetune.lr == 0.001


# -- fingerprint and diff ---------------------------------------------------------------------

def test_fingerprint_ignores_search_settings_but_not_the_study_meaning():
    cfg = _cfg()
    same = cfg.with_search(trials=80, out="other", storage="sqlite:///a.db", workers=4, address="auto")
    assert same.fingerprint() == cfg.fingerprint()
    assert _cfg(finetune={"steps": 300}).fingerprint() != cfg.fingerprint()
    assert _cfg(space={"bits": [4, 8]}).fingerprint() != cfg.fingerprint()
    assert _cfg(activation_bits=8).fingerprint() != cfg.fingerprint()
    assert len(cfg.fingerprint()) == 64


def test_fingerprint_is_stable_under_equivalent_spellings():
    a = _cfg(space={"sparsity": 0.5, "bits": [8, 4]}, objectives=["size", "accuracy"])
    b = _cfg(space={"sparsity": {"low": 0.5, "high": 0.5}, "bits": [4, 8]}, objectives=["accuracy", "size"])
    assert a.fingerprint() == b.fingerprint()
    assert StudyConfig.from_dict(a.to_dict()).fingerprint() == a.fingerprint()


def test_config_diff_lines():
    old = _cfg().to_dict()
    new = _cfg(finetune={"steps": 300}, search={"sampler": "nsga2"}, space={"bits": [4, 8]}).to_dict()
    assert config_diff(old, new) == [
        "space.bits: [2, 3, 4, 5, 6, 8, 16, 32] -> [4, 8]",
        "finetune.steps: 200 -> 300",
        "search.sampler: tpe -> nsga2",
    ]
    assert config_diff(old, old) == []
    assert config_diff({"a": 1}, {"b": None}) == ["a: 1 -> (absent)", "b: (absent) -> null"]
    assert config_diff({"x": 1}, {"x": 1.0}) == []
    assert config_diff({"x": 1}, {"x": True}) == ["x: 1 -> true"]
    assert config_diff(_cfg(), _cfg(finetune={"steps": 300})) == ["finetune.steps: 200 -> 300"]


def test_the_batchnorm_default_keeps_older_fingerprints_and_train_changes_it():
    older = _cfg()
    assert "batchnorm" not in older.fingerprint_data()["finetune"]
    trained = _cfg(finetune={"batchnorm": "train"})
    assert trained.fingerprint() != older.fingerprint()
    with pytest.raises(ConfigError, match=r"finetune\.batchnorm"):
        _cfg(finetune={"batchnorm": "eval"})
