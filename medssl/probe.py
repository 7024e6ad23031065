"""A representation probe: do the frozen encoder's case vectors carry the label, more than a random encoder's?

The SSL field's cheap check of a pretraining run, before any finetuning: embed every labelled case with the
frozen pretrained encoder (``medssl.embed``) and with the same architecture at a random initialisation, then
fit scikit-learn's logistic regression and k-nearest-neighbour classifiers on the vectors with patient-grouped,
stratified folds (the folds ``medssl cv`` makes: ``medssl.data.splits.make_folds``). Each probe's AUROC is
computed on the pooled out-of-fold predictions, with a bootstrap CI over cases, and the pretrained - random
difference with a paired bootstrap CI (the same resamples for both).

    medssl probe --checkpoint runs/pre/checkpoints/last.ckpt --data.layout picai --data.root /data/picai --output probe/

Labels: ``case-level`` (default: whether the case's label mask has a lesion voxel) or ``column:NAME`` (a clinical
column the layout reads, e.g. PI-CAI's marksheet ``case_csPCa``: ``YES``/``1``/``true`` are positive).

Outputs (each written atomically): ``probe.json`` (the scores, the CIs, the folds' seed, the cases, the weights'
sha256) and ``probe.md``.
"""

from __future__ import annotations

import copy
import logging
import os
from collections.abc import Callable, Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import roc_auc_score
from sklearn.neighbors import KNeighborsClassifier
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

from medssl.data.datamodule import FinetuneDataModule
from medssl.data.layouts import Case
from medssl.data.splits import make_folds
from medssl.data.transforms import case_transform, preprocess_case
from medssl.embed import Encoder, load_encoder
from medssl.errors import ConfigError, DataError
from medssl.io import refuse_output_over_inputs, write_json, write_text
from medssl.models.host import resolve_device
from medssl.records import file_sha256

logger = logging.getLogger(__name__)

PROBES = ("logistic", "knn")
POSITIVE = {"1", "yes", "true", "y", "positive"}


def random_twin(encoder: Encoder, seed: int = 0) -> Encoder:
    """The same encoder at a random initialisation: every module's own ``reset_parameters`` under ``seed`` (the
    baseline a pretrained encoder has to beat; the global random stream is left as it was)."""
    model = copy.deepcopy(encoder.model)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        for module in model.modules():
            if hasattr(module, "reset_parameters") and module is not model:
                module.reset_parameters()
    return Encoder(encoder.architecture, model, encoder.meta)


def case_labels(cases: Sequence[Case], labels: str, positive_of: Callable[[list[Case]], dict[str, bool]]
                ) -> dict[str, int]:
    """Case id -> 0/1 for the probe: ``case-level`` (a lesion voxel in the label mask) or ``column:NAME``."""
    if labels == "case-level":
        labelled = [c for c in cases if c.label is not None]
        return {k: int(v) for k, v in positive_of(labelled).items()}
    if labels.startswith("column:"):
        column = labels.removeprefix("column:")
        found = {c.case_id: c.clinical.get(column) for c in cases if c.clinical.get(column) not in (None, "")}
        if not found:
            raise ConfigError(f"--labels {labels}: no case has a {column!r} column (clinical columns: "
                              f"{sorted({k for c in cases for k in c.clinical})[:8]})")
        return {case: int(str(value).strip().lower() in POSITIVE) for case, value in found.items()}
    raise ConfigError(f"--labels {labels}: choose case-level or column:NAME")


def _auroc_with_ci(y: np.ndarray, scores: dict[str, np.ndarray], n_bootstrap: int, seed: int) -> dict[str, Any]:
    """AUROC of each score, its percentile bootstrap CI over cases, and the paired difference of the first two."""
    rng = np.random.default_rng(seed)
    draws = rng.integers(0, len(y), size=(n_bootstrap, len(y)))
    out: dict[str, Any] = {}
    resampled = {}
    for name, s in scores.items():
        values = []
        for idx in draws:
            if 0 < y[idx].sum() < len(idx):
                values.append(roc_auc_score(y[idx], s[idx]))
            else:
                values.append(np.nan)
        resampled[name] = np.asarray(values)
        valid = resampled[name][np.isfinite(resampled[name])]
        out[name] = {"auroc": float(roc_auc_score(y, s)),
                     "ci": [float(v) for v in np.percentile(valid, [2.5, 97.5])] if len(valid) else None}
    return out | {"_resampled": resampled}


def run_probe(
    checkpoint: str | os.PathLike,
    layout: str,
    root: str | os.PathLike,
    output: str | os.PathLike,
    labels: str = "case-level",
    labels_root: str | None = None,
    pool: str | None = None,
    n_folds: int = 5,
    split_seed: int = 0,
    neighbours: int = 5,
    n_bootstrap: int = 1000,
    device: str = "auto",
    config: str | None = None,
    progress: Callable[[Iterable[Case]], Iterable[Case]] | None = None,
) -> dict[str, Any]:
    """Probe the frozen encoder of ``checkpoint`` against a random encoder of the same architecture.

    Args:
        checkpoint: pretraining (or finetuned) weights of an architecture with an embedding.
        layout, root, labels_root: the labelled data.
        output: folder for ``probe.json`` and ``probe.md``.
        labels: ``case-level`` or ``column:NAME``.
        pool: the embedding's pooling (default: the architecture's first, e.g. ``cls`` for BM-MAE).
        n_folds, split_seed: patient-grouped, stratified folds (as ``medssl cv`` makes them).
        neighbours: k of the kNN probe.
        n_bootstrap: resamples of the CIs.
        device: ``auto``, ``cpu`` or ``cuda``.
        config: the run's config, if not saved in or found beside the checkpoint.

    Returns:
        ``probe.json``'s content: per encoder (``pretrained``, ``random``) and probe (``logistic``, ``knn``) the
        out-of-fold AUROC with its 95% CI, and per probe the paired difference pretrained - random with its CI.
    """
    out = Path(output)
    if out.exists() and not out.is_dir():
        raise ConfigError(f"--output {out} is a file; give a folder")
    pretrained = load_encoder(checkpoint, config)
    pool = pool or pretrained.architecture.pools[0]
    if pool not in pretrained.architecture.pools:
        raise ConfigError(f"--pool {pool}: {checkpoint} pools {' or '.join(pretrained.architecture.pools)}")
    encoders = {"pretrained": pretrained, "random": random_twin(pretrained)}
    run_on = resolve_device(device)
    meta = pretrained.meta
    data = FinetuneDataModule(layout=layout, root=str(root), labels_root=labels_root,
                              modalities=list(pretrained.modalities), spacing=meta.spacing,
                              spatial_size=meta.spatial_size, cache_dir=None, augmentation=None,
                              clip_percentiles=meta.clip_percentiles, normalize=meta.normalize)
    cases = data.discover()
    refuse_output_over_inputs(out, [*data.input_paths(cases), checkpoint])
    y_of = case_labels(cases, labels, data.label_positive)
    cases = [c for c in cases if c.case_id in y_of]
    y = np.array([y_of[c.case_id] for c in cases])
    if len(cases) < 2 * n_folds or not 0 < y.sum() < len(y):
        raise DataError(f"the probe needs both classes and at least {2 * n_folds} labelled cases; found {len(y)} "
                        f"({int(y.sum())} positive)", path=str(root))
    folds = make_folds([c.case_id for c in cases], [c.patient_id for c in cases], list(y.astype(bool)), n_folds,
                       split_seed)
    fold_of = {case: k for k, ids in enumerate(folds) for case in ids}
    transform = case_transform(data.preprocessing(with_labels=False), bool(meta.voxel_aligned))
    vectors: dict[str, list[np.ndarray]] = {name: [] for name in encoders}
    for encoder in encoders.values():
        encoder.model.to(run_on).eval()
    for case in progress(cases) if progress else cases:
        image = torch.as_tensor(preprocess_case(transform, case)["image"], dtype=torch.float32)
        present = [bool(case.images.get(m)) for m in pretrained.modalities]
        for name, encoder in encoders.items():
            vectors[name].append(encoder.embed(image, present, pool))
    scores: dict[str, dict[str, np.ndarray]] = {}
    for name, rows in vectors.items():
        x = np.stack(rows)
        scores[name] = {probe: np.zeros(len(y)) for probe in PROBES}
        for k in range(n_folds):
            test = np.array([fold_of[c.case_id] == k for c in cases])
            for probe, model in (("logistic", make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))),
                                 ("knn", make_pipeline(StandardScaler(), KNeighborsClassifier(neighbours)))):
                if len(set(y[~test])) < 2:
                    raise DataError(f"fold {k}'s training cases hold one class only: lower --folds", path=str(root))
                model.fit(x[~test], y[~test])
                scores[name][probe][test] = model.predict_proba(x[test])[:, 1]
    result: dict[str, Any] = {
        "checkpoint": str(checkpoint), "checkpoint_sha256": file_sha256(checkpoint), "architecture":
        pretrained.architecture.name, "pool": pool, "labels": labels, "cases": len(y), "positive": int(y.sum()),
        "folds": n_folds, "split_seed": split_seed, "neighbours": neighbours, "n_bootstrap": n_bootstrap,
        "random_init": "the same architecture, every module's reset_parameters under seed 0", "probes": {},
    }
    for probe in PROBES:
        both = _auroc_with_ci(y, {name: scores[name][probe] for name in encoders}, n_bootstrap, split_seed)
        diff = both["_resampled"]["pretrained"] - both["_resampled"]["random"]
        diff = diff[np.isfinite(diff)]
        result["probes"][probe] = {
            "pretrained": both["pretrained"], "random": both["random"],
            "difference": both["pretrained"]["auroc"] - both["random"]["auroc"],
            "difference_ci": [float(v) for v in np.percentile(diff, [2.5, 97.5])] if len(diff) else None,
        }
    out.mkdir(parents=True, exist_ok=True)
    write_json(out / "probe.json", result)
    write_text(out / "probe.md", _markdown(result))
    return result


def _markdown(result: dict[str, Any]) -> str:
    def ci(v):
        return "n/a" if not v else f"[{v[0]:.3f}, {v[1]:.3f}]"

    lines = ["# Representation probe", "",
             f"Frozen {result['architecture']} encoder of `{result['checkpoint']}` (sha256 "
             f"{result['checkpoint_sha256'][:12]}), `{result['pool']}` pooling, against the same architecture at a "
             f"random initialisation. Labels `{result['labels']}`: {result['cases']} cases, {result['positive']} "
             f"positive; {result['folds']} patient-grouped stratified folds (seed {result['split_seed']}); AUROC of "
             "the pooled out-of-fold predictions with a 95% bootstrap CI over cases.", "",
             "| probe | pretrained AUROC [95% CI] | random AUROC [95% CI] | pretrained - random [95% CI] |",
             "|---|---|---|---|"]
    for probe, row in result["probes"].items():
        name = "logistic regression" if probe == "logistic" else f"{result['neighbours']}-nearest neighbours"
        lines.append(f"| {name} | {row['pretrained']['auroc']:.3f} {ci(row['pretrained']['ci'])} | "
                     f"{row['random']['auroc']:.3f} {ci(row['random']['ci'])} | {row['difference']:+.3f} "
                     f"{ci(row['difference_ci'])} |")
    return "\n".join(lines) + "\n"
