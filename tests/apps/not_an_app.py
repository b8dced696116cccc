"""A module whose ``app`` is not a belvedere.App, for the CLI's error tests."""

app = object()
