"""One thin module per ``medssl`` subcommand: parse the arguments, call the library, print.

A command never imports another command; everything a command does lives in the library
(``medssl.runs``, ``medssl.cv``, ``medssl.inference``, ``medssl.data``, ``medssl.evaluation``, ...).
``medssl.cli`` dispatches to ``<module>.main(argv) -> exit code``.
"""
