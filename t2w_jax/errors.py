"""The one exception type for expected user errors.

A ``UserError`` is a mistake the user can fix (a bad config value, a missing workdir, a
corpus written with other settings, a second writer on a workdir). The launch scripts
(``t2w_jax/cli.py``) print its message as one line and exit non-zero, without a traceback;
anything else is a bug and keeps its traceback.

The concrete classes also derive from the builtin a caller would expect (``ValueError``,
``FileNotFoundError``), so code that catches those keeps working.
"""


class UserError(Exception):
  """An expected error whose message alone tells the user what to change."""


class ConfigError(UserError, ValueError):
  """A config value or argument that cannot work; the message names it."""


class MissingError(UserError, FileNotFoundError):
  """A workdir, corpus, generator or file that is not there."""


class CorruptError(UserError, ValueError):
  """A file on disk that fails its integrity check; the message names it and the fix."""


class BusyError(UserError, RuntimeError):
  """Another process holds the workdir; the message names its pid."""
