"""The one exception and the one warning category of the data layer.

Every problem a user can fix in their data or data settings is a :class:`DataError`
whose message names the file, column or value and says what to change. It subclasses
``ValueError`` so callers that validate settings can catch both uniformly.
"""

from __future__ import annotations


class DataError(ValueError):
    """A data problem the user must fix; the message names the culprit and the fix."""


class DataWarning(UserWarning):
    """Images were skipped (unreadable or blank); training goes on without them."""


__all__ = ["DataError", "DataWarning"]
