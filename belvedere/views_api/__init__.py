"""views_api: the HTTP layer over views, served by every worker on faust's aiohttp server.

One module per concept: ``errors`` (every error is JSON), ``auth`` (the admin token),
``reads`` (a view's rows), ``rebuilds`` (starting and watching a rebuild), and ``routes``
(which path goes where).
"""
