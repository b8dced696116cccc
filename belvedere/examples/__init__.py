"""Examples that ship in the package, so that ``belvedere demo`` runs after a plain
``pip install``, from any directory: the shop (``belvedere.examples.shop``)."""
