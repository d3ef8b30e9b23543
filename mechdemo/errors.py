"""User-facing errors.

Every error a user can fix by themselves (a wrong name, a missing token, no network, a missing
package, a layer out of range, a corrupt file) is a :class:`MechdemoError` whose message names the
fix. The command line prints these as one paragraph, without a traceback; library users catch
them like any exception.
"""

from __future__ import annotations


class MechdemoError(Exception):
    """An error the user can fix; ``str(error)`` says how."""


class UnknownModelError(MechdemoError, KeyError):
    """The model name is not in the registry."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class GatedModelError(MechdemoError):
    """A gated Hub model was asked for without a token that has access."""


class ModelNotAvailableOfflineError(MechdemoError):
    """No network (or HF_HUB_OFFLINE=1) and the model is not in the local Hugging Face cache."""


class MissingPackageError(MechdemoError):
    """A Python package needed for this step is not installed."""


class OutOfRangeError(MechdemoError, IndexError):
    """A layer, head or position index outside the model's range."""


class CorruptFileError(MechdemoError):
    """A cached or stored file failed its integrity check."""
