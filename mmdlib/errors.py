"""The exception types mmdlib raises: bad input, and an interruption that says how to continue."""


class MMDLibError(ValueError):
    """Bad input: the message names the value and what is allowed."""


class Interrupted(KeyboardInterrupt):
    """Ctrl-C (SIGINT) during a run; the message says what was kept and how to continue."""


def unreadable(path, what: str, error: BaseException) -> MMDLibError:
    """The error for a file that is not ``what`` (e.g. "a checkpoint"), from the ``error`` loading it raised: never
    torch's advice to retry with ``weights_only=False``, which for a file that may run code is dangerous."""
    import pickle

    if isinstance(error, pickle.UnpicklingError):
        return MMDLibError(f"{str(path)!r} is not {what} this tool can read: it holds more than tensors and plain "
                           f"data, and unpickling it could run code, so it was not loaded.")
    return MMDLibError(f"{str(path)!r} is not {what} this tool can read (empty, truncated or not a weights file: "
                       f"{type(error).__name__}).")
