"""Exception classes shared by every command (the CLI turns them into one line and exit code 2).

* :class:`UserError`: the input or the settings cannot be used; the message names the file or
  the setting and the problem. A ``ValueError``, so callers that catch ``ValueError`` keep working.
* :class:`NonFiniteError`: a number that must be finite is NaN or Inf (audio, labels, teacher
  outputs, a training loss, weights); the message says which and where.
"""

from __future__ import annotations


class UserError(ValueError):
    """Unusable input or settings; the message names the file or setting and the problem."""


class NonFiniteError(UserError):
    """A NaN or Inf where a finite number is required (the message says which and where)."""
