"""LightningCLI for medssl: the system and the data module are chosen by ``class_path`` in the config."""

from __future__ import annotations

import argparse
import os
import re

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback

from medssl.checkpoint import load_checkpoint
from medssl.errors import ConfigError, MedsslError


def condense_config_error(exc: BaseException) -> str:
    """jsonargparse's nested report of a bad config as one line: the dotted key and what is wrong.

    jsonargparse explains a failure by listing every type it tried (including ``None``) with the
    values it saw; the user needs the key and the reason.
    """
    text = str(exc)
    unknown = re.search(r"[Uu]nrecognized arguments: (.*)", text)
    if unknown:
        return (f"unknown option {unknown.group(1).strip()}: check the key's spelling "
                "(`medssl fit --help` lists every key)")
    keys = [k for k in re.findall(r'[Kk]ey "([^"]+)"', text) if k not in ("model", "data")]
    section = next((s for s in ("model", "data", "trainer") if f'key "{s}"' in text), None)
    reasons = []
    for line in text.splitlines():
        line = line.strip().removeprefix("- ").strip()
        if not line or line.startswith(("Parser key", "Does not validate", "Subtypes:", "Errors:", "Given value",
                                        "Problem with given class_path", "Expected a <class 'NoneType'>",
                                        "File ", "Traceback", "^", "~")):
            continue
        match = re.match(r"^(?:[\w.]+(?:Error|Exception)): (.*)$", line)
        reasons.append(match.group(1) if match else line)
    reason = reasons[-1] if reasons else text.splitlines()[0] if text else type(exc).__name__
    key = ".".join([s for s in (section, *keys) if s])
    return f"{key}: {reason}" if key else reason


class MedsslCLI(LightningCLI):
    """``medssl fit|validate|test|predict``.

    ``model`` is a system from ``medssl.systems`` and ``data`` a data module from ``medssl.data``;
    each config names them with ``class_path`` and their options under ``init_args`` (the CLI
    also takes the short form ``--data.root DIR``). A bad key, value or argument becomes one
    ``ConfigError`` line naming the key; ``--ckpt_path`` is checked to hold tensors only first.
    """

    def __init__(self, args=None, run: bool = True, **kwargs):
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=SaveConfigCallback,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"prog": "medssl", "env_prefix": "MEDSSL", "allow_abbrev": False, "exit_on_error": False},
            args=args,
            run=run,
            **kwargs,
        )

    def parse_arguments(self, parser, args) -> None:
        try:
            super().parse_arguments(parser, args)
        except (argparse.ArgumentError, ValueError, TypeError) as e:
            raise ConfigError(condense_config_error(e)) from None

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except MedsslError:
            raise
        except (argparse.ArgumentError, ValueError, TypeError) as e:
            raise ConfigError(condense_config_error(e)) from None
        # One checkpoint folder per run folder (not per logger version), so `--ckpt_path last`
        # finds the last checkpoint of a killed run when the same command is started again.
        for callback in self.trainer.checkpoint_callbacks:
            if callback.dirpath is None:
                callback.dirpath = os.path.join(self.trainer.default_root_dir, "checkpoints")

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyperparameters right after parsing; check the file first so an
        # unsafe one is refused with one line naming it (its code never runs: weights_only loading).
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand, self.config) if subcommand else self.config
        path = config.get("ckpt_path")
        if path and path not in ("last", "best", "hpc", "registry"):
            load_checkpoint(path)
        super()._parse_ckpt_path()
