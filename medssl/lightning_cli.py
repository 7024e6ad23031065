"""LightningCLI for medssl: the system and the data module are chosen by ``class_path`` in the config."""

from __future__ import annotations

import argparse
import inspect
import os
import pickle
import re
import sys

from lightning.pytorch import Callback, LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback
from lightning.pytorch.plugins.io import TorchCheckpointIO

from medssl.checkpoint import load_checkpoint
from medssl.errors import CheckpointError, ConfigError, MedsslError, one_line


class SafeCheckpointIO(TorchCheckpointIO):
    """Every checkpoint Lightning opens (``--ckpt_path``, ``last``/``best``, a resumed fold) goes through
    medssl's safe loader: tensors and plain containers only, whatever ``TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD``
    says (it only affects ``torch.load`` calls that do not pass ``weights_only``; ours always does)."""

    def load_checkpoint(self, path, map_location=None, weights_only=None):
        return load_checkpoint(path)

    def save_checkpoint(self, checkpoint, path, storage_options=None) -> None:
        """Through medssl's atomic writer: written under a temporary name, read back safely, then renamed
        (a full disk is one line, never a truncated ``last.ckpt`` that the next resume would trust)."""
        from medssl.io import save_torch

        save_torch(checkpoint, path)


class LastAtTrainEnd(Callback):
    """``last.ckpt`` holds the final epoch's weights whatever the validation interval.

    Lightning's ``ModelCheckpoint`` saves ``last.ckpt`` when it saves, at validation ends; with
    ``check_val_every_n_epoch`` not dividing ``max_epochs`` the last epochs would be missing from it silently, and
    ``medssl cv --selection last`` would report an earlier epoch. At the end of training each ``save_last``
    callback's ``last.ckpt`` is written again when it is older than the final step.
    """

    def on_train_end(self, trainer, pl_module) -> None:
        for callback in trainer.checkpoint_callbacks:
            if not getattr(callback, "save_last", False) or not callback.dirpath:
                continue
            path = os.path.join(callback.dirpath, "last.ckpt")
            if getattr(callback, "_last_global_step_saved", -1) != trainer.global_step or not os.path.isfile(path):
                trainer.save_checkpoint(path, weights_only=False)  # a full checkpoint: resumable


class MedsslSaveConfig(SaveConfigCallback):
    """Lightning's config saving, and the same resolved YAML handed to the system, which stores it in every
    checkpoint it writes (so a checkpoint always knows the config that made it)."""

    def setup(self, trainer, pl_module, stage: str) -> None:
        pl_module.run_config = self.parser.dump(self.config, skip_none=False, skip_validation=True)
        super().setup(trainer, pl_module, stage)


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
    if "Expected a <class 'list'>" in reason:  # the type alone does not say how to write a list on a command line
        name = key.split(".")[-1] if key else "KEY"
        example = EXAMPLES.get(name, "[1, 2, 3]")
        reason = f"expected a list, e.g. --{key or name} '{example}'"
    return f"{key}: {reason}" if key else reason


# how to write the list-valued options users meet first (all [D, H, W] = [z, y, x])
EXAMPLES = {"spacing": "[3.0, 0.5, 0.5]", "spatial_size": "[20, 256, 256]", "crop_size": "[16, 128, 128]",
            "modalities": "[t2w, adc, hbv]", "clip_percentiles": "[0.5, 99.5]", "roi_size": "[16, 128, 128]"}


def _check_yaml_files(args) -> None:
    """Each ``--config`` file must be readable YAML: a syntax error names the file, line and column (jsonargparse
    reports it as a "<unicode string>")."""
    import yaml

    args = list(args or [])
    paths = [args[i + 1] for i, a in enumerate(args[:-1]) if a == "--config"]
    paths += [a.split("=", 1)[1] for a in args if a.startswith("--config=")]
    for path in paths:
        if not os.path.isfile(path):
            continue  # jsonargparse names a missing file itself
        try:
            with open(path, encoding="utf-8") as f:
                yaml.safe_load(f)
        except yaml.YAMLError as e:
            mark = getattr(e, "problem_mark", None)
            where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
            problem = getattr(e, "problem", None) or one_line(e)
            raise ConfigError(f"{path}: not valid YAML{where}: {problem}") from None
        except UnicodeDecodeError:
            raise ConfigError(f"{path}: not UTF-8 text; save the config as UTF-8") from None


class MedsslCLI(LightningCLI):
    """``medssl fit|validate|test|predict``.

    ``model`` is a system from ``medssl.systems`` and ``data`` a data module from ``medssl.data``;
    each config names them with ``class_path`` and their options under ``init_args`` (the CLI
    also takes the short form ``--data.root DIR``). A bad key, value or argument becomes one
    ``ConfigError`` line naming the key; ``--ckpt_path`` is checked to hold tensors only first.
    """

    def __init__(self, args=None, run: bool = True, instantiate: bool = True, **kwargs):
        self._instantiate = instantiate  # False: parse and resolve the config only (medssl.runs.resolve)
        # Lightning's per-step progress bar only on a terminal: redirected to a file (nohup, SLURM, Docker) it
        # writes a line fragment per step; medssl's own one-line-per-epoch messages remain
        kwargs.setdefault("trainer_defaults", {"enable_progress_bar": sys.stdout.isatty() and sys.stderr.isatty()})
        super().__init__(
            model_class=LightningModule,
            datamodule_class=LightningDataModule,
            subclass_mode_model=True,
            subclass_mode_data=True,
            save_config_callback=MedsslSaveConfig,
            save_config_kwargs={"overwrite": True},
            seed_everything_default=0,
            parser_kwargs={"prog": "medssl", "env_prefix": "MEDSSL", "allow_abbrev": False, "exit_on_error": False},
            args=args,
            run=run,
            **kwargs,
        )

    def parse_arguments(self, parser, args) -> None:
        _check_yaml_files(args)
        try:
            super().parse_arguments(parser, args)
        except (argparse.ArgumentError, ValueError, TypeError) as e:
            raise ConfigError(condense_config_error(e)) from None
        subcommand = self.config.get("subcommand")
        seed = (self.config.get(subcommand) if subcommand else self.config).get("seed_everything")
        if not isinstance(seed, bool) and seed is not None and not 0 <= int(seed) < 2**32:
            # Lightning would warn and draw a random seed: a run that looks seeded and is not reproducible
            raise ConfigError(f"--seed_everything {seed}: give an integer from 0 to {2**32 - 1} (or true for a "
                              "random seed, recorded in the config)")

    def instantiate_classes(self) -> None:
        from lightning.fabric.utilities.exceptions import MisconfigurationException

        if not self._instantiate:
            return
        try:
            super().instantiate_classes()
        except MedsslError:
            raise
        except MisconfigurationException as e:  # e.g. enable_checkpointing false beside a recipe's ModelCheckpoint
            raise ConfigError(f"trainer: {one_line(e)}") from None
        except (argparse.ArgumentError, ValueError, TypeError) as e:
            raise ConfigError(self._name_net_key(condense_config_error(e))) from None
        self.trainer.strategy.checkpoint_io = SafeCheckpointIO()
        # One checkpoint folder per run folder (not per logger version), so `--ckpt_path last`
        # finds the last checkpoint of a killed run when the same command is started again.
        for callback in self.trainer.checkpoint_callbacks:
            if callback.dirpath is None:
                callback.dirpath = os.path.join(self.trainer.default_root_dir, "checkpoints")
        self.trainer.callbacks.append(LastAtTrainEnd())

    def _name_net_key(self, message: str) -> str:
        """A net's own ``ValueError`` ("feature_size=0 must be ...") names its argument only; give the key path
        the config uses, ``model.init_args.net.init_args.<arg>``, so the user knows what to change."""
        if "model.init_args.net.init_args." in message:
            return message
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand, self.config) if subcommand else self.config
        try:
            net = config["model"]["init_args"]["net"]
            module, _, name = str(net["class_path"]).rpartition(".")
            cls = getattr(__import__(module, fromlist=[name]), name)
        except (KeyError, TypeError, AttributeError, ImportError, ValueError):
            return message
        match = re.match(r"^(\w+)=", message)
        params = inspect.signature(cls.__init__).parameters
        if match and match.group(1) in params:
            return f"model.init_args.net.init_args.{match.group(1)}: {message}"
        return message

    def _set_seed(self) -> None:
        if self._instantiate:  # parsing alone changes no global random state
            super()._set_seed()

    def _checkpoint_of_run(self) -> str | None:
        """The ``--ckpt_path`` file of this command (``last``/``best`` and other names Lightning resolves: None)."""
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand, self.config) if subcommand else self.config
        path = config.get("ckpt_path")
        return path if path and os.path.isfile(str(path)) else None

    def _apply_checkpoint(self) -> None:
        """``validate``, ``test`` and ``predict`` with ``--ckpt_path``: the net comes from the checkpoint
        (``medssl.weights.load_model``, the one way from weights to a model), and the data settings must be the
        ones it was trained with (the compatibility rule ``infer`` applies)."""
        from medssl import weights

        path = self._checkpoint_of_run()
        if path is None or not hasattr(self.model, "use_net"):
            return
        net, meta = weights.load_model(path)
        weights.check_finite(net, path)
        meta.check_data(self.datamodule, path)
        self.model.use_net(net)
        # the weights are in: evaluation needs nothing else from the file, so Lightning does not open it again
        # (and a finetuned checkpoint medssl wrote without Lightning's bookkeeping works too)
        self.config_init[self.subcommand]["ckpt_path"] = None

    def before_fit(self) -> None:
        """A run folder may hold the data (Lightning's default root is the current folder) but not lie inside it."""
        from medssl.io import refuse_output_over_inputs

        if hasattr(self.datamodule, "input_paths"):
            refuse_output_over_inputs(self.trainer.default_root_dir, self.datamodule.input_paths(),
                                      "--trainer.default_root_dir", contain_ok=True)
        # one run per folder: a second fit into it would overwrite the first one's last.ckpt
        last = os.path.join(self.trainer.default_root_dir, "checkpoints", "last.ckpt")
        if os.path.isfile(last) and not self._checkpoint_of_run() and self.config_init["fit"].get("ckpt_path") is None:
            raise ConfigError(f"{last} holds an earlier run's checkpoint: resume it with --ckpt_path last, or give "
                              "this run its own --trainer.default_root_dir")

    def before_validate(self) -> None:
        self._apply_checkpoint()

    def before_test(self) -> None:
        self._apply_checkpoint()

    def before_predict(self) -> None:
        """``medssl predict`` writes what ``medssl infer`` writes, under ``<default_root_dir>/predictions``."""
        from lightning.pytorch.callbacks import BasePredictionWriter

        from medssl.io import refuse_output_over_inputs
        from medssl.systems.writer import MapWriter

        self._apply_checkpoint()
        if not any(isinstance(cb, BasePredictionWriter) for cb in self.trainer.callbacks):
            path = self._checkpoint_of_run()
            folder = os.path.join(self.trainer.default_root_dir, "predictions")
            self.datamodule.setup("predict")
            refuse_output_over_inputs(folder, [*self.datamodule.input_paths(self.datamodule.predict_cases), path],
                                      "--trainer.default_root_dir")
            self.trainer.callbacks.append(MapWriter(folder, [path] if path else []))

    def _parse_ckpt_path(self) -> None:
        # LightningCLI reads --ckpt_path's hyperparameters right after parsing; check the file first so an
        # unsafe one is refused with one line naming it (its code never runs: weights_only loading).
        subcommand = self.config.get("subcommand")
        config = self.config.get(subcommand, self.config) if subcommand else self.config
        path = config.get("ckpt_path")
        if path and path not in ("last", "best", "hpc", "registry"):
            checkpoint = load_checkpoint(path)
            saved = (checkpoint.get("hyper_parameters") or {}).get("_class_path")
            model = config.get("model")
            wanted = model.get("class_path") if hasattr(model, "get") else None
            if saved and wanted and saved != wanted:
                raise CheckpointError(f"--ckpt_path {path} is a {saved.rsplit('.', 1)[-1]} checkpoint but the "
                                      f"config's model is {wanted.rsplit('.', 1)[-1]}; give the config it was "
                                      "trained with")
        try:
            super()._parse_ckpt_path()
        except SystemExit:
            raise ConfigError(f"--ckpt_path {path}: its hyperparameters do not fit the config's model; give the "
                              "config it was trained with") from None
        except pickle.UnpicklingError:  # Lightning re-reads it without medssl's allow-list of plain data types
            raise CheckpointError(f"--ckpt_path {path}: holds numpy or argparse values Lightning cannot read back; "
                                  "load its weights with --model.init_args.init_from instead") from None
