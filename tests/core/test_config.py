"""Config and eps parsing: every bad value is a UsageError that names it."""

from __future__ import annotations

from fractions import Fraction

import pytest

from robench.config import build_config, load_config, parse_eps_flag, parse_eps_value
from robench.errors import UsageError


def test_eps_fractions_and_numbers():
    assert parse_eps_value("linf", "8/255") == Fraction(8, 255)
    assert parse_eps_flag("l2:0.25, 0.5") == ("l2", ["0.25", "0.5"])


@pytest.mark.parametrize("text, message", [
    ("linf:-1/255", ">= 0"),
    ("linf:abc", "number or a fraction"),
    ("linf:2", "above 1"),
    ("lnf:0.1", "did you mean 'linf'"),
    ("linf", "THREAT:E1"),
    ("corruption:7", "1 to 5"),
])
def test_bad_eps(text, message):
    with pytest.raises(UsageError, match=message):
        parse_eps_flag(text)


def test_toml_file_and_overrides(tmp_path):
    path = tmp_path / "grid.toml"
    path.write_text('name = "t"\nattacks = ["pgd"]\nlimit = 50\n[eps]\nlinf = ["4/255"]\n'
                    '[attack.pgd]\nsteps = 5\n')
    cfg = load_config(path, limit="20")
    assert cfg.name == "t" and cfg.limit == 20 and cfg.attacks == ["pgd"]
    assert cfg.eps_values("linf") == [4 / 255]
    assert cfg.plugin_params("attack", "pgd") == {"steps": 5}


@pytest.mark.parametrize("data, message", [
    ({"atacks": ["pgd"]}, "did you mean 'attacks'"),
    ({"limit": -3}, "limit"),
    ({"epochs": "many"}, "epochs"),
    ({"seed": 1.5}, "seed"),
    ({"attacks": []}, "empty"),
    ({"attacks": ["pgd", "pgd"]}, "twice"),
    ({"device": "tpu"}, "auto, cpu, cuda"),
    ({"eps": {"linf": ["x"]}}, "Bad eps"),
    ({"attack": {"pgd": 3}}, r"\[attack.NAME\]"),
    ({"name": "../up"}, "path separators"),
])
def test_bad_config(data, message):
    with pytest.raises(UsageError, match=message):
        build_config(data)


def test_missing_and_malformed_files(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_config(tmp_path / "nope.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("name = [unclosed\n")
    with pytest.raises(UsageError, match="not valid TOML"):
        load_config(bad)


def test_precision_is_checked():
    assert build_config({"precision": "bf16"}).precision == "bf16"
    with pytest.raises(UsageError, match="fp32, bf16, fp16"):
        build_config({"precision": "fp8"})


def test_bf16_on_a_cpu_without_native_bf16_warns(tmp_path, monkeypatch):
    import warnings

    import robench.validation as validation
    from robench.grid import Grid

    cfg = build_config({"precision": "bf16", "device": "cpu", "out": str(tmp_path),
                        "target": "none", "adaptors": ["none"]})
    monkeypatch.setattr(validation, "cpu_has_native_bf16", lambda: False)
    with pytest.warns(RuntimeWarning, match="without native bf16.*--precision fp32"):
        Grid(cfg).validate()
    monkeypatch.setattr(validation, "cpu_has_native_bf16", lambda: True)
    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        Grid(cfg).validate()


# --------------------------------------------------------------------------- seeds


def test_seeds_is_a_list_and_seed_its_one_seed_shorthand():
    assert build_config({}).seed_list == [0]
    assert build_config({"seed": 3}).seed_list == [3]
    config = build_config({"seeds": [2, 0, 1]})
    assert config.seeds == [2, 0, 1] and config.seed == 2 and config.seed_list == [2, 0, 1]
    # the command line's string, and a flag replacing the file's other key
    assert build_config({"seed": 4}, seeds="0, 1,2").seed_list == [0, 1, 2]
    assert build_config({"seeds": [0, 1]}, seed="5").seed_list == [5]
    # agreeing keys (a GridConfig written back as a mapping) are fine
    assert build_config({"seed": 1, "seeds": [1, 2]}).seed_list == [1, 2]
    assert build_config({"seed": 1, "seeds": []}).seed_list == [1]


@pytest.mark.parametrize("data, message", [
    ({"seeds": [0, 0]}, "lists a seed twice"),
    ({"seeds": [-1]}, "'seeds' must be an integer >= 0, got -1"),
    ({"seeds": "0,x"}, "'seeds' must be an integer >= 0, got 'x'"),
    ({"seeds": [1.5]}, "'seeds' must be an integer >= 0"),
    ({"seeds": {"a": 1}}, "must be a list of integers"),
    ({"seed": 1, "seeds": [0, 1]}, "disagree: seed is the one-seed shorthand"),
])
def test_bad_seeds_are_refused_with_one_sentence(data, message):
    with pytest.raises(UsageError, match=message):
        build_config(data)
