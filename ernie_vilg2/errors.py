"""The base of the errors the package reports to its users.

Each error class of the package derives from :class:`ErnieViLG2Error` and keeps its builtin
base (``ValueError`` for bad input, ``RuntimeError`` for a failed run), so the tools catch
one class and callers' ``except ValueError`` keeps working.
"""


class ErnieViLG2Error(Exception):
    """An error whose message is one line naming the field, flag or file at fault: the tools
    print it as ``error: MESSAGE`` and exit with status 2."""
