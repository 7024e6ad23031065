"""The one name-and-shape matcher behind every checkpoint filter."""

from __future__ import annotations

import torch

from medssl.checkpoint import match_state_dict


def test_match_reports_each_kind_once():
    target = {"a.w": torch.zeros(2, 3), "b.w": torch.zeros(4), "pos": torch.zeros(1, 8), "c": torch.zeros(1)}
    source = {"model.a.w": torch.ones(2, 3), "model.b.w": torch.ones(5), "model.pos": torch.ones(1, 4),
              "model.extra": torch.ones(1), "model.step": 3}
    filtered, report = match_state_dict(
        source, target, rename=lambda k: k.removeprefix("model."),
        unknown_kind=lambda name: "unexpected",
        mismatch_kind=lambda name: "skipped" if name == "pos" else "mismatched")
    assert list(filtered) == ["a.w"] and torch.equal(filtered["a.w"], torch.ones(2, 3))
    assert report["loaded"] == ["a.w"]
    assert report["mismatched"] == ["model.b.w: (5,) vs (4,)"]
    assert report["skipped"] == ["model.pos"]  # a rebuilt table, not an error
    assert report["unexpected"] == ["model.extra"]  # the non-tensor "step" is ignored
    assert report["missing"] == ["b.w", "c"]  # left at their init; pos is rebuilt, not missing


def test_first_of_two_keys_mapping_to_one_name_wins():
    filtered, report = match_state_dict({"net.w": torch.ones(1), "w": torch.zeros(1)}, {"w": torch.zeros(1)},
                                        rename=lambda k: k.removeprefix("net."))
    assert torch.equal(filtered["w"], torch.ones(1)) and report["skipped"] == ["w"]
