"""The one base class of expected errors: bad input a user can fix (a config key, a data folder, a run name).

Every `raymh` command prints such an error as its message alone and exits 1; anything else is a bug and
keeps its traceback.
"""

from __future__ import annotations


class InputError(ValueError):
    """Bad input; the message names the file, key or value and says how to fix it."""
