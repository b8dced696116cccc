"""Long variants: the issue's full sizes, run on demand (``BELVEDERE_LONG=1``), not in CI."""

from __future__ import annotations

import os
from typing import Any

import pytest

__all__ = ["LONG", "long_variant"]

LONG = os.environ.get("BELVEDERE_LONG") == "1"


def long_variant(*values: Any, id: str | None = None, marks: tuple[Any, ...] = ()) -> Any:
    """A parametrize case marked ``long`` and skipped unless ``BELVEDERE_LONG=1``: it would
    take more of CI's time budget than its extra confidence is worth on every push."""
    return pytest.param(
        *values,
        id=id,
        marks=(
            *marks,
            pytest.mark.long,
            pytest.mark.skipif(not LONG, reason="long variant: runs with BELVEDERE_LONG=1"),
        ),
    )
