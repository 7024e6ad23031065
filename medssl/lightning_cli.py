"""LightningCLI for medssl: the system and the data module are chosen by ``class_path`` in the config."""

from __future__ import annotations

from lightning.pytorch import LightningDataModule, LightningModule
from lightning.pytorch.cli import LightningCLI, SaveConfigCallback


class MedsslCLI(LightningCLI):
    """``medssl fit|validate|test|predict``.

    ``model`` is a system from ``medssl.systems`` and ``data`` a data module from ``medssl.data``;
    each config names them with ``class_path`` and their options under ``init_args`` (the CLI
    also takes the short form ``--data.root DIR``).
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
            parser_kwargs={"prog": "medssl", "env_prefix": "MEDSSL", "allow_abbrev": False},
            args=args,
            run=run,
            **kwargs,
        )
