"""Every place Belvedere leans on a private name or an undocumented behaviour of faust,
mode, aiokafka, aiohttp, orjson or glibc's malloc, one module per upstream library.

The rest of Belvedere calls the small typed functions and subclasses here, never the
upstream internals. Each workaround says which upstream limit it works around, and
``tests/test_compat.py`` holds a canary per workaround that fails when the upstream name
or behaviour it relies on changes (an upgrade then fails there first, by name).
"""
