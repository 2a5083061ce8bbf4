"""Errors that the user can act on. Each message names the file or node and what is wrong."""


class MambaDoseError(Exception):
    """Base class: the CLI prints the message on one line and exits non-zero; Slicer shows a dialog."""


class InputError(MambaDoseError):
    """Bad input data (a file, a folder, a node): the message names it and the problem."""


class WeightsError(MambaDoseError):
    """A weights file or model card that is missing, corrupted or does not match."""
