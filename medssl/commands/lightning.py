"""``medssl fit|validate|test|predict``: LightningCLI with medssl's systems and data modules."""

from __future__ import annotations


def main(argv: list[str]) -> int:
    from medssl.lightning_cli import MedsslCLI

    MedsslCLI(args=argv)
    return 0
