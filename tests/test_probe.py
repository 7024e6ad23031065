"""``medssl probe``: a frozen encoder's case vectors against a random encoder's, on patient-grouped folds."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml

from medssl.commands.probe import main as probe_main
from medssl.data.layouts import Case
from medssl.embed import load_encoder
from medssl.errors import ConfigError
from medssl.models.ssl_heads import CSwinSSLModel
from medssl.probe import case_labels, random_twin
from medssl.runs import resolve
from medssl.weights import CheckpointMeta
from tests.conftest import REPO


@pytest.fixture(scope="module")
def pretraining_checkpoint(picai_root, tmp_path_factory):
    config = resolve([REPO / "configs/pretrain/cswin_tiny.yaml"], ["--data.root", str(picai_root)])
    torch.manual_seed(0)
    net = CSwinSSLModel(**config["model"]["init_args"]["net"]["init_args"])
    data = config["data"]["init_args"]
    meta = CheckpointMeta(architecture="cswin_unet", net="CSwinSSLModel", kind="pretraining", layout="picai",
                          modalities=["t2w", "adc", "hbv"], spacing=data["spacing"],
                          spatial_size=data["spatial_size"], config=yaml.safe_dump(config))
    path = tmp_path_factory.mktemp("probe_ckpt") / "last.ckpt"
    torch.save({"state_dict": {f"net.{k}": v for k, v in net.state_dict().items()}, "medssl": meta.to_entry()}, path)
    return path


def test_the_random_twin_is_the_same_architecture_at_another_initialisation(pretraining_checkpoint):
    encoder = load_encoder(pretraining_checkpoint)
    torch.manual_seed(3)
    expected = torch.rand(2)
    torch.manual_seed(3)
    twin = random_twin(encoder)
    assert torch.equal(torch.rand(2), expected)  # the global stream is left alone
    ours, theirs = encoder.model.state_dict(), twin.model.state_dict()
    assert ours.keys() == theirs.keys() and any(not torch.equal(ours[k], theirs[k]) for k in ours)
    assert all(torch.equal(a, b) for a, b in zip(random_twin(encoder).model.state_dict().values(), theirs.values()))


def test_probe_scores_both_encoders_with_cis(pretraining_checkpoint, picai_root, tmp_path, capsys):
    out = tmp_path / "probe"
    assert probe_main(["--checkpoint", str(pretraining_checkpoint), "--data.root", str(picai_root), "--output",
                       str(out), "--folds", "3", "--device", "cpu"]) == 0
    result = json.loads((out / "probe.json").read_text())
    assert result["cases"] >= 20 and 0 < result["positive"] < result["cases"]
    for probe in ("logistic", "knn"):
        row = result["probes"][probe]
        for name in ("pretrained", "random"):
            auroc, (low, high) = row[name]["auroc"], row[name]["ci"]
            assert 0 <= low <= auroc <= high <= 1
        assert row["difference"] == pytest.approx(row["pretrained"]["auroc"] - row["random"]["auroc"])
        assert row["difference_ci"][0] <= row["difference_ci"][1]
    printed = capsys.readouterr().out
    assert "logistic: pretrained AUROC" in printed and "random" in printed
    assert "| logistic regression |" in (out / "probe.md").read_text()


def test_labels_from_a_clinical_column_or_refused_in_one_line():
    cases = [Case("a", "a", {}, clinical={"case_csPCa": "YES"}), Case("b", "b", {}, clinical={"case_csPCa": "NO"}),
             Case("c", "c", {}, clinical={})]
    assert case_labels(cases, "column:case_csPCa", lambda c: {}) == {"a": 1, "b": 0}
    with pytest.raises(ConfigError, match="no case has a 'psa_class' column"):
        case_labels(cases, "column:psa_class", lambda c: {})
    with pytest.raises(ConfigError, match="choose case-level or column:NAME"):
        case_labels(cases, "cases", lambda c: {})
    assert np.array_equal(sorted(case_labels(cases, "case-level", lambda c: {"x": True}).values()), [1])
