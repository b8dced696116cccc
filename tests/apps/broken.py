"""A module that fails while importing, for the CLI's error tests."""

import this_module_does_not_exist  # noqa: F401
