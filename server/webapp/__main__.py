"""Entry point of ``python -m webapp`` (the image's CMD)."""

from .serve import main

main()
