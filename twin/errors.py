"""Errors raised by the twins when input is wrong."""


class TwinInputError(ValueError):
    """Bad input to a twin: the message names the value and where it came from."""


class ParameterSetError(TwinInputError):
    """A parameter set is unknown or its tables are invalid."""


class FmuError(TwinInputError):
    """An FMU cannot be read, is not supported here, or failed while running.

    The message says which file, which variable or which call, and what to do.
    """
