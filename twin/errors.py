"""Errors raised by the twins when input is wrong."""


class TwinInputError(ValueError):
    """Bad input to a twin: the message names the value and where it came from."""


class ParameterSetError(TwinInputError):
    """A parameter set is unknown or its tables are invalid."""
