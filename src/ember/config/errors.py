"""One error type for bad input: the CLI prints its message as one line and exits 2."""


class ConfigError(ValueError):
    """A user-facing problem with the config or the data it names; the message is one sentence."""


def first_line(err: BaseException) -> str:
    """An exception as one line, for a message that must stay one (libraries' errors run long)."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__
