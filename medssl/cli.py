"""The ``medssl`` command: Lightning's fit/validate/test/predict plus the project's own subcommands.

``medssl fit --config a.yaml --config b.yaml --data.fold 3`` is LightningCLI (jsonargparse): stacked
configs, ``--print_config``, and the resolved ``config.yaml`` saved in every run's log folder.
The project's subcommands (``synth``, ``check``, ...) are plain argparse. Every user mistake
ends as one ``medssl: error: ...`` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import sys
import warnings
from collections.abc import Callable

from medssl.errors import MedsslError, find_user_error, one_line

LIGHTNING_COMMANDS = ("fit", "validate", "test", "predict")
HELP = """usage: medssl COMMAND [options]

Self-supervised pretraining and lesion detection on 3-D MRI (PI-CAI, BraTS, datalists).

Lightning commands (configs in YAML, any key overridable as --section.key value):
  fit          train a model:        medssl fit --config configs/pretrain/cswin_tiny.yaml --data.root DIR
  validate     validate a checkpoint
  test         test a checkpoint
  predict      predict with a checkpoint
Project commands:
{commands}
Run `medssl COMMAND --help` for a command's options.
"""


def _synth(argv: list[str]) -> int:
    from medssl.data.synth import synth_brats, synth_picai

    parser = argparse.ArgumentParser(prog="medssl synth", description="Write synthetic data in a real layout.")
    parser.add_argument("layout", choices=["picai", "brats"])
    parser.add_argument("out", help="destination folder")
    parser.add_argument("--cases", type=int, default=None, help="number of cases (30 PI-CAI, 12 BraTS)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.layout == "picai":
        ids = synth_picai(args.out, cases=args.cases or 30, seed=args.seed)
    else:
        ids = synth_brats(args.out, cases=args.cases or 12, seed=args.seed)
    print(f"wrote {len(ids)} synthetic {args.layout} cases to {args.out}")
    return 0


def _check(argv: list[str]) -> int:
    from medssl.check import check_dataset, format_summary

    parser = argparse.ArgumentParser(prog="medssl check", description="Read every case and summarise the data.")
    parser.add_argument("root", help="data root (PI-CAI: the folder holding images/; datalist: the file)")
    parser.add_argument("--layout", choices=["picai", "brats", "datalist"], required=True)
    parser.add_argument("--labels", default=None, help="PI-CAI picai_labels folder (default: beside images/)")
    parser.add_argument("--label-source", default="human_expert", choices=["human_expert", "AI", "human_expert+AI"])
    parser.add_argument("--modalities", default=None, help="comma-separated modalities (datalist)")
    parser.add_argument("--json", action="store_true", help="print one JSON object on stdout")
    args = parser.parse_args(argv)
    modalities = args.modalities.split(",") if args.modalities else None
    summary = check_dataset(args.root, args.layout, args.labels, args.label_source, modalities)
    for line in summary["errors"]:
        print(f"medssl: error: {line}", file=sys.stderr)
    print(json.dumps(summary) if args.json else format_summary(summary))
    return 1 if summary["errors"] else 0


# name -> ("module:function", help line); a command's module is imported only when it runs,
# so `medssl --help` and `medssl synth` start without torch, Lightning or MONAI.
OWN_COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("medssl.cli:_synth", "write synthetic data in a real layout:  medssl synth picai OUT --cases 30"),
    "check": ("medssl.cli:_check", "read every case and summarise a data set:  medssl check ROOT --layout picai"),
    "cv": ("medssl.cv:main", "k-fold finetuning + PI-CAI report:  medssl cv --config CFG --output DIR [--twin]"),
    "reconstruct": ("medssl.reconstruct:main",
                    "fill in missing sequences with BM-MAE:  medssl reconstruct --checkpoint CKPT --data.root DIR "
                    "--output OUT"),
    "infer": ("medssl.infer:main", "predict new cases with a finetuned checkpoint:  medssl infer --checkpoint CKPT "
              "--data.root DIR --output OUT"),
    "quickstart": ("medssl.quickstart:main", "synthetic data -> pretrain -> 5-fold CV, both twins:  medssl quickstart"),
}


def run_lightning(argv: list[str]) -> None:
    from medssl.lightning_cli import MedsslCLI

    MedsslCLI(args=argv)


def _own_command(name: str) -> Callable[[list[str]], int]:
    module, func = OWN_COMMANDS[name][0].split(":")
    return getattr(importlib.import_module(module), func)


def _console_logging() -> None:
    """medssl's messages to stderr, once. Not on the root logger: Lightning then stops printing its own
    messages itself and every line would appear twice (once from its handler, once from the root)."""
    log = logging.getLogger("medssl")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a notebook's stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property always follows sys.stderr
        pass


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _console_logging()
    # project subcommands drive LightningCLI with args of their own; that is intended here
    warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
    try:
        if not argv or argv[0] in ("-h", "--help", "help"):
            commands = "".join(f"  {name:<12} {line}\n" for name, (_, line) in OWN_COMMANDS.items())
            print(HELP.format(commands=commands.rstrip("\n")))
            return 0
        command = argv[0]
        if command in OWN_COMMANDS:
            return _own_command(command)(argv[1:])
        if command in LIGHTNING_COMMANDS:
            run_lightning(argv)
            return 0
        print(f"medssl: error: unknown command {command!r}; run `medssl --help`", file=sys.stderr)
        return 2
    except MedsslError as e:
        print(f"medssl: error: {one_line(e)}", file=sys.stderr)
        return 2
    except Exception as e:
        user_error = find_user_error(e)
        if user_error is None:
            raise
        print(f"medssl: error: {one_line(user_error)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("medssl: interrupted", file=sys.stderr)
        return 130


def entry_point() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry_point()
