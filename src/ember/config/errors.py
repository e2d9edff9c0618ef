"""One error type for bad input: the CLI prints its message as one line and exits 2."""


class ConfigError(ValueError):
    """A user-facing problem with the config or the data it names; the message is one sentence."""
