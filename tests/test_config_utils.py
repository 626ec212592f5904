"""Config argument parsing (`--config file.py:key=value,...`) and every shipped config."""

import importlib.util
import pathlib

import ml_collections
import pytest

from classkd_jax.config_utils import parse_arg

CONFIG_DIR = pathlib.Path(__file__).resolve().parents[1] / "configs"


def test_parse_arg_uses_defaults_when_empty():
    cfg = parse_arg(None, size="tiny", seed=0)
    assert cfg.size == "tiny" and cfg.seed == 0


def test_parse_arg_converts_to_the_default_type():
    cfg = parse_arg("size=base,seed=3,lr=0.5,debug=false", size="tiny", seed=0, lr=1.0, debug=True)
    assert (cfg.size, cfg.seed, cfg.lr, cfg.debug) == ("base", 3, 0.5, False)


def test_parse_arg_bare_name_sets_a_bool():
    assert parse_arg("debug", debug=False).debug is True


def test_parse_arg_unknown_key_names_it():
    with pytest.raises(ValueError, match="unknown config argument 'sise'"):
        parse_arg("sise=tiny", size="tiny")


def test_parse_arg_lazy_keeps_unknown_keys_as_strings():
    assert parse_arg("extra=1", lazy=True, size="tiny").extra == "1"


def test_parse_arg_bad_value_names_key_and_value():
    with pytest.raises(ValueError, match="seed='x'"):
        parse_arg("seed=x", seed=0)


def _config_files():
    return sorted(p for p in CONFIG_DIR.glob("*.py") if not p.name.startswith("_"))


@pytest.mark.parametrize("path", _config_files(), ids=lambda p: p.name)
def test_every_config_builds_and_is_locked(path):
    spec = importlib.util.spec_from_file_location(f"configs.{path.stem}", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
    assert isinstance(config, ml_collections.ConfigDict)
    assert config.is_locked, f"{path.name}: get_config() must return a locked ConfigDict"
    with pytest.raises(AttributeError):
        config.this_key_does_not_exist = 1
