"""The one exception type mmdlib raises for bad input."""


class MMDLibError(ValueError):
    """Bad input: the message names the value and what is allowed."""
