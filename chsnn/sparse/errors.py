"""The engine's configuration error, in a module of its own so that the
strategies can raise it without importing the config that imports them."""


class ConfigError(ValueError):
    """A bad engine option: names the key, the value and what is allowed."""
