"""Errors raised by Belvedere's broker layer, each meant to be shown to a user as one line."""

__all__ = ["BrokerError", "BrokerLocked", "BrokerRefused", "BrokerUnreachable", "TopicMismatch"]


class BrokerError(Exception):
    """The broker refused an operation."""


class BrokerLocked(BrokerError):
    """Another process holds the embedded broker's log."""

    def __init__(self, message: str, pid: int | None = None) -> None:
        super().__init__(message)
        self.pid = pid


class BrokerUnreachable(BrokerError):
    """No broker answered at the configured address."""


class BrokerRefused(BrokerError):
    """The broker answered but would not serve this client: TLS, SASL login, or protocol."""


class TopicMismatch(BrokerError):
    """A topic exists with another partition count than the app declares."""
