"""The ``medssl`` command: Lightning's fit/validate/test/predict plus the project's own subcommands.

``medssl fit --config a.yaml --config b.yaml --data.fold 3`` is LightningCLI (jsonargparse): stacked
configs, ``--print_config``, and the resolved ``config.yaml`` saved in every run's log folder.
The project's subcommands (``synth``, ``check``, ...) are plain argparse. Every user mistake
ends as one ``medssl: error: ...`` line and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import importlib
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
Run `medssl COMMAND --help` for a command's options; `medssl --version` prints the version.
"""


# name -> ("module:function", help line); a command's module is imported only when it runs,
# so `medssl --help` and `medssl synth` start without torch, Lightning or MONAI.
OWN_COMMANDS: dict[str, tuple[str, str]] = {
    "synth": ("medssl.commands.synth:main",
              "write synthetic data in a real layout:  medssl synth picai OUT --cases 30"),
    "check": ("medssl.commands.check:main",
              "read every case and summarise a data set:  medssl check ROOT --layout picai"),
    "cv": ("medssl.commands.cv:main",
           "k-fold finetuning + PI-CAI report:  medssl cv --config CFG --output DIR [--twin]"),
    "infer": ("medssl.commands.infer:main", "predict new cases with finetuned model(s):  medssl infer --checkpoint "
              "CKPT [CKPT ...] | --cv CV_DIR --data.root DIR --output OUT"),
    "evaluate": ("medssl.commands.evaluate:main",
                 "score prediction maps against labels:  medssl evaluate --predictions DIR --labels LABELS [--json]"),
    "embed": ("medssl.commands.embed:main",
              "one vector per case from a pretrained encoder:  medssl embed --checkpoint CKPT --data.root DIR "
              "--output OUT [--pool cls|mean]"),
    "reconstruct": ("medssl.commands.reconstruct:main",
                    "fill in missing sequences with BM-MAE:  medssl reconstruct --checkpoint CKPT --data.root DIR "
                    "--output OUT"),
    "probe": ("medssl.commands.probe:main",
              "frozen encoder vectors vs a random encoder's, linear and kNN probes:  medssl probe --checkpoint CKPT "
              "--data.root DIR --output OUT"),
    "quickstart": ("medssl.commands.quickstart:main",
                   "synthetic data -> pretrain -> 5-fold CV, both twins:  medssl quickstart"),
}
LIGHTNING_ENTRY = "medssl.commands.lightning:main"


def _command(target: str) -> Callable[[list[str]], int]:
    module, func = target.split(":")
    return getattr(importlib.import_module(module), func)


def _console_logging() -> None:
    """medssl's messages to stderr, once. Not on the root logger: Lightning then stops printing its own
    messages itself and every line would appear twice (once from its handler, once from the root)."""
    log = logging.getLogger("medssl")
    if not any(isinstance(h, _Stderr) for h in log.handlers):
        handler = _Stderr()
        handler.setFormatter(logging.Formatter("%(message)s"))
        handler.addFilter(_Once())
        log.addHandler(handler)
        log.setLevel(logging.INFO)
        log.propagate = False


class _Once(logging.Filter):
    """Each warning once per command: the same data warning is not repeated for every fold that reads the data."""

    def __init__(self) -> None:
        super().__init__()
        self.seen: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        if record.levelno < logging.WARNING:
            return True
        message = record.getMessage()
        if message in self.seen:
            return False
        self.seen.add(message)
        return True


class _Stderr(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a test's capture, a notebook's stream)."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler.__init__ sets it; the property always follows sys.stderr
        pass


_shown: set[tuple[type, str]] = set()


def _show_once(message, category, filename, lineno, file=None, line=None) -> None:
    """``warnings.showwarning`` for a command: the first line of each distinct warning, once, to stderr (a
    library's warning repeated by every fold of a cv is one line in a log, not one per fold)."""
    text = next((ln.strip() for ln in str(message).splitlines() if ln.strip()), category.__name__)
    if (category, text) in _shown:
        return
    _shown.add((category, text))
    print(f"medssl: warning: {text}", file=sys.stderr)


def main(argv: list[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    _console_logging()
    with warnings.catch_warnings():  # scoped to the command: importing medssl changes no filter
        warnings.showwarning = _show_once  # each warning once per command, on one line
        # deprecations inside the libraries medssl drives (jsonargparse, Lightning, torch) are not the user's to fix
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", message=".*deprecated.*", module="(lightning|jsonargparse|torch).*")
        warnings.filterwarnings("ignore", message=".*(LeafSpec|skip_none|add_instantiator|instantiate_classes).*")
        # project subcommands drive LightningCLI with args of their own; that is intended here
        warnings.filterwarnings("ignore", message=".*LightningCLI's args parameter is intended.*")
        # the systems override transfer_batch_to_device on purpose (MedsslModule)
        warnings.filterwarnings("ignore", message=".*overridden `transfer_batch_to_device` in `LightningModule`.*")
        return _dispatch(argv)


def _dispatch(argv: list[str]) -> int:
    try:
        if argv and argv[0] in ("--version", "-V"):
            from importlib.metadata import PackageNotFoundError, version

            try:
                print(f"medssl {version('medssl')}")
            except PackageNotFoundError:  # a source checkout that was never installed
                print("medssl (not installed: a source checkout)")
            return 0
        if not argv or argv[0] in ("-h", "--help", "help"):
            commands = "".join(f"  {name:<12} {line}\n" for name, (_, line) in OWN_COMMANDS.items())
            print(HELP.format(commands=commands.rstrip("\n")))
            return 0
        command = argv[0]
        if command in OWN_COMMANDS:
            return _command(OWN_COMMANDS[command][0])(argv[1:])
        if command in LIGHTNING_COMMANDS:
            return _command(LIGHTNING_ENTRY)(argv)
        print(f"medssl: error: unknown command {command!r}; run `medssl --help`", file=sys.stderr)
        return 2
    except MedsslError as e:
        print(f"medssl: error: {one_line(e)}", file=sys.stderr)
        return 2
    except OSError as e:
        if not e.filename:
            raise
        # a folder that cannot be written (read-only, full) or a path that does not exist: the file and why
        print(f"medssl: error: {e.filename}: {e.strerror or one_line(e)}", file=sys.stderr)
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
