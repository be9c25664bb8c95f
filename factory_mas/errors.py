"""The project's exceptions: one root, a few kinds, messages a person can act on.

Foreign errors (msgspec, sqlite, numpy files, ...) are converted where they enter, so callers
only ever catch these.
"""


class FactoryError(Exception):
    """Root of every error factory_mas raises on purpose."""


class SettingsError(FactoryError, ValueError):
    """A setting has a value that is not allowed; the message names key, value and rule."""


class RecordError(FactoryError, ValueError):
    """An input record (telemetry, frame, command) failed validation.

    `field` names the offending field when one is to blame, so HTTP answers and the
    rejected-records topic can point at it.
    """

    def __init__(self, reason: str, field: str | None = None) -> None:
        super().__init__(reason if field is None else f"{field}: {reason}")
        self.reason = reason
        self.field = field


class ArtifactError(FactoryError):
    """A trained model artifact is missing, corrupt or does not match the code."""


class StoreError(FactoryError):
    """The persistent store could not be opened or written.

    The message is for the server log: it may name the database file or URL and hold the
    failed SQL with its values. `public` says what failed in words fit for a client."""

    @property
    def public(self) -> str:
        text = f"{self} {self.__cause__ or ''}".lower()
        for words, reason in _STORE_REASONS:
            if any(word in text for word in words):
                return f"the store could not be used: {reason}"
        return "the store could not be used: unavailable"


_STORE_REASONS = (
    (("full", "no space"), "disk full"),
    (("locked", "busy", "lock timeout", "deadlock"), "database locked"),
    (("readonly", "read-only", "read only", "permission denied"), "database read-only"),
)


class TrainingError(FactoryError):
    """The data given to `train` cannot train a model: a needed column or label is absent,
    too few rows, or the result would not beat its baseline. The message says which."""
