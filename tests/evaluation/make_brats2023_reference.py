"""Recompute ``brats2023_official.json``: the official BraTS-2023-Metrics code on the shipped cases.

    python tests/evaluation/make_brats2023_reference.py --official PATH/TO/BraTS-2023-Metrics [--python PY]

The official code is a repository, not a package (``metrics.py`` and a vendored ``surface_distance``), pinned to
NumPy < 2 and pandas < 2 (``np.Inf``, ``DataFrame.append``): give ``--python`` an interpreter of an environment
with its requirements (numpy<2, pandas<2, scipy, nibabel, connected-components-3d). The cases are written with
medssl's environment; the official code reads them in that interpreter; nothing of it is copied here.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from tests.evaluation.brats2023_cases import write_cases  # noqa: E402

RUN = """
import json, sys
sys.path.insert(0, sys.argv[1])
import metrics
out = {}
for case, (pred, label) in json.loads(sys.argv[2]).items():
    table = metrics.get_LesionWiseResults(pred, label, "BraTS-GLI")
    out[case] = {row["Labels"]: {k: float(row[k]) for k in ("LesionWise_Score_Dice", "LesionWise_Score_HD95",
                 "Num_TP", "Num_FP", "Num_FN", "Legacy_Dice", "Legacy_HD95")} for _, row in table.iterrows()}
print(json.dumps(out))
"""
VERSIONS = ("import json, numpy, pandas, scipy, nibabel\n"
            "print(json.dumps({m.__name__: m.__version__ for m in (numpy, pandas, scipy, nibabel)}))")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--official", required=True, type=Path, help="a checkout of BraTS-2023-Metrics")
    parser.add_argument("--python", default=sys.executable, help="an interpreter with the official requirements")
    args = parser.parse_args()
    commit = subprocess.run(["git", "-C", str(args.official), "rev-parse", "HEAD"], capture_output=True,
                            text=True).stdout.strip() or None
    with tempfile.TemporaryDirectory() as tmp:
        paths = {c: [str(pred), str(label)] for c, (pred, label) in write_cases(Path(tmp)).items()}
        done = subprocess.run([args.python, "-c", RUN, str(args.official), json.dumps(paths)], capture_output=True,
                              text=True, check=True)
    versions = subprocess.run([args.python, "-c", VERSIONS], capture_output=True, text=True)
    out = {"source": "https://github.com/rachitsaluja/BraTS-2023-Metrics, metrics.get_LesionWiseResults(pred, "
                     "label, 'BraTS-GLI')", "commit": commit,
           "made_by": "python tests/evaluation/make_brats2023_reference.py --official CHECKOUT --python PY",
           "environment": json.loads(versions.stdout or "{}"), "cases": json.loads(done.stdout)}
    (HERE / "brats2023_official.json").write_text(json.dumps(out, indent=1, sort_keys=True) + "\n")


if __name__ == "__main__":
    main()
