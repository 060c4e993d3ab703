"""User-facing errors.

Anything a user can cause (a wrong path, a config that disagrees with its tensors, a NaN loss) raises
``SSMQuantError`` with a one-line message that names the file, field or flag to change. The CLI prints that line
and exits non-zero; only ``--debug`` shows the traceback. Programming errors stay ordinary exceptions.
"""

from __future__ import annotations


class SSMQuantError(Exception):
    """An error the user can fix; ``str(err)`` is a complete one-line message."""


class CheckpointError(SSMQuantError):
    """A checkpoint (directory, Hub id or file) is missing, malformed, or disagrees with its config."""


class ConfigError(SSMQuantError):
    """A config field is invalid, unsupported, or inconsistent with another field."""


class DataError(SSMQuantError):
    """A data source is empty, unreadable, or lacks the expected field."""


class TrainingError(SSMQuantError):
    """Training cannot go on (NaN/Inf loss, a refused resume, an occupied output directory)."""
