"""User-facing errors.

Every mistake a user can make (bad data, bad config, unsafe checkpoint) is raised as a
``MedsslError``; the CLI prints its message as one line and exits non-zero without a traceback.
Programming errors stay ordinary exceptions and keep their traceback.
"""

from __future__ import annotations


class MedsslError(Exception):
    """Base class of the errors the CLI reports as one line."""


class DataError(MedsslError):
    """A case or file that cannot be used: names the case id, the file and the problem."""

    def __init__(self, message: str, case_id: str | None = None, path: str | None = None):
        parts = [p for p in (f"case {case_id}" if case_id else None, str(path) if path else None) if p]
        super().__init__(": ".join([*parts, message]))
        self.case_id = case_id
        self.path = path


class ConfigError(MedsslError, ValueError):
    """A config value that cannot work: names the key and what to change."""


class CheckpointError(MedsslError, ValueError):
    """A checkpoint that cannot or must not be loaded."""


def one_line(exc: BaseException) -> str:
    """The message of ``exc`` as one line.

    DataLoader workers re-raise an exception with the worker's traceback folded into the message;
    the user only needs its last line.
    """
    text = str(exc).strip()
    if "Traceback (most recent call last)" in text:
        text = text.splitlines()[-1]
        for prefix in (f"{type(exc).__module__}.{type(exc).__name__}: ", f"{type(exc).__name__}: "):
            text = text.removeprefix(prefix)
    return " ".join(text.split())


def find_user_error(exc: BaseException) -> MedsslError | None:
    """The MedsslError behind ``exc``: MONAI's transforms and DataLoader workers wrap the original."""
    seen = set()
    while exc is not None and id(exc) not in seen:
        if isinstance(exc, MedsslError):
            return exc
        seen.add(id(exc))
        exc = exc.__cause__ or exc.__context__
    return None
