"""``medssl.runs``: configs as dicts (resolve at the command boundary, build from a dict plus overrides), the user's
override options, and a finetuned run rebuilt from its checkpoint alone."""

from __future__ import annotations

import pytest

from medssl.errors import ConfigError
from medssl.runs import build, computation_config, inference_config, merge, parse_overrides, resolve
from tests.conftest import REPO

TINY = REPO / "configs/finetune/cswin_picai_tiny.yaml"


def test_parse_overrides_reads_values_as_yaml_and_puts_class_sections_under_init_args():
    out = parse_overrides(["--data.root", "/d", "--data.spacing", "[3.0, 1.0, 1.0]", "--trainer.max_epochs=2",
                           "--model.init_args.init_from", "null", "--data.class_path", "x.Y", "--model.lr", "1e-3"])
    assert out == {"data": {"init_args": {"root": "/d", "spacing": [3.0, 1.0, 1.0]}, "class_path": "x.Y"},
                   "trainer": {"max_epochs": 2}, "model": {"init_args": {"init_from": None, "lr": 1e-3}}}
    for bad, match in ((["data.root", "/d"], "unexpected argument"), (["--data.root"], "needs a value"),
                       (["--root", "/d"], "give a section and a key"), (["--data.root", "--x"], "needs a value")):
        with pytest.raises(ConfigError, match=match):
            parse_overrides(bad)


def test_merge_lays_mappings_over_mappings_and_replaces_the_rest():
    base = {"data": {"init_args": {"root": "a", "spacing": [1, 2, 3]}}, "trainer": {"callbacks": [1, 2]}}
    out = merge(base, {"data": {"init_args": {"spacing": [4]}}, "trainer": {"callbacks": [3]}})
    assert out == {"data": {"init_args": {"root": "a", "spacing": [4]}}, "trainer": {"callbacks": [3]}}
    assert base["data"]["init_args"]["spacing"] == [1, 2, 3]  # the input is not changed


def test_resolve_then_build_equals_parsing_the_same_options():
    """The dict path gives the objects the argv path gives: same config after a round trip, same values."""
    config = resolve([TINY], ["--data.root", "/x", "--trainer.max_epochs", "2"])
    assert config["data"]["init_args"]["root"] == "/x" and config["trainer"]["max_epochs"] == 2
    built = build(config, {"data": {"init_args": {"fold": 3}}, "trainer": {"max_epochs": 5}})
    assert built.datamodule.fold == 3 and built.trainer.max_epochs == 5 and built.datamodule.root == "/x"
    assert computation_config(build(config).config) == computation_config(config)
    with pytest.raises(ConfigError, match="data.root"):
        build(config, {"data": {"init_args": {"root": ""}}})


def test_resolve_refuses_an_unknown_key_in_one_line():
    with pytest.raises(ConfigError, match="unknown option|not accepted|no_such"):
        resolve([TINY], ["--data.root", "/x", "--data.no_such", "1"])


def test_inference_config_drops_fit_keys_and_init_from():
    config = {"ckpt_path": "x", "optimizer": None, "model": {"init_args": {"init_from": "/p.ckpt", "lr": 1}},
              "data": {}}
    assert inference_config(config) == {"model": {"init_args": {"init_from": None, "lr": 1}}, "data": {}}


def test_computation_config_ignores_where_a_run_writes():
    config = resolve([TINY], ["--data.root", "/x"])
    moved = merge(config, {"trainer": {"default_root_dir": "/elsewhere"}, "data": {"init_args": {"cache_dir": "/c"}}})
    other = merge(config, {"data": {"init_args": {"spacing": [3.0, 2.0, 2.0]}}})
    assert computation_config(moved) == computation_config(config) != computation_config(other)
