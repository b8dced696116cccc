"""Belvedere: event-driven services with materialized views, on faust."""

from belvedere.app import App

__all__ = ["App", "__version__"]
__version__ = "0.1.0"
