"""The errors a user causes and can fix: bad params, missing or corrupt files, a diverging run.

Every pipeline step is a CLI command (:mod:`ssaseg.cli`). An :class:`InputError` ends it with
its message on one line of stderr (``error: ...``) and exit code 2, without a traceback; any
other exception is a bug in ssaseg and keeps its traceback. The message names the file or key
and says what to do.

Each class also derives from the built-in exception it refines (ValueError, KeyError,
FileNotFoundError, RuntimeError), so code that catches those keeps working. The families:

- :class:`ParameterError` - a value the schema lets through that the code refuses (a
  combination of keys, a range that depends on another value);
- :class:`UnknownNameError` - a name not in its registry (model, classifier, weights, ...);
- :class:`MissingFileError` - an input file that is not there (which command makes it);
- :class:`UnavailableError` - what the params ask for and this machine or tracking store has
  not got (a GPU, a deleted MLflow experiment);
- :class:`CheckpointError` - a checkpoint or weights file that cannot be loaded (truncated,
  corrupt, holding pickled objects, keys that do not match the model, non-finite values);
- elsewhere, beside the code that raises them: ``ConfigError`` (params files,
  :mod:`ssaseg.config`), ``DatasetError`` (:mod:`ssaseg.data.layout`), ``RunLockedError``
  (:mod:`ssaseg.engine.run_lock`), ``NonFiniteLossError`` (:mod:`ssaseg.engine.train`).
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input the user can fix; the CLI prints the message and exits with code 2."""


class ParameterError(InputError, ValueError):
    """A parameter value (or combination) the code refuses; the message names the key."""


class UnknownNameError(InputError, KeyError):
    """A name that is not in its registry; the message lists the known names."""

    def __str__(self) -> str:  # KeyError would repr() the message
        return str(self.args[0]) if self.args else ""


class MissingFileError(InputError, FileNotFoundError):
    """An input file that is not there; the message says which command writes it."""


class UnavailableError(InputError, RuntimeError):
    """The params ask for something this machine or store has not got; the message says what
    to change."""


class CheckpointError(InputError, RuntimeError):
    """A checkpoint or weights file cannot be loaded; the one-line message names the file."""


def first_line(exc: BaseException) -> str:
    """The first non-empty line of an exception's message (torch's run over many lines): what
    an :class:`InputError` raised from it quotes."""
    return next((line.strip() for line in str(exc).splitlines() if line.strip()),
                type(exc).__name__)


def load_failure(exc: BaseException) -> str:
    """What ``torch.load`` (or safetensors) failed on, in a few words: its messages run over
    many lines, and for unreadable bytes under ``weights_only=True`` they suggest
    ``weights_only=False``, which is no advice for a corrupt file."""
    text = str(exc)
    if "WeightsUnpickler error:" in text:
        detail = text.split("WeightsUnpickler error:", 1)[1].strip().split("\n\n", 1)[0]
        return f"unpickling failed ({' '.join(detail.split())})"
    return first_line(exc).split(". ", 1)[0]
