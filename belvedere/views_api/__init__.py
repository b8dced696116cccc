"""views_api: the HTTP query layer over views."""
