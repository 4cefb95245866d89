"""One root exception; each error says whether retrying can help (`retriable`)."""

from __future__ import annotations


class SessionPulseError(Exception):
    """Root of the service's own errors."""

    retriable = False


class InvalidMessage(SessionPulseError):
    """An inbound message that can never be applied: it goes to the dead-letter topic."""

    def __init__(self, error_type: str, message: str) -> None:
        super().__init__(message)
        self.error_type = error_type
        self.message = message


class StoreUnavailable(SessionPulseError):
    """Redis cannot be reached or answered with a transient error: back off and retry."""

    retriable = True


class ConfigurationError(SessionPulseError, ValueError):
    """A setting that cannot be used as given (a file that does not load, settings that do
    not go together); the message names the setting."""
