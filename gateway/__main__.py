"""`python -m gateway` is `polegw`."""

from gateway.cli import app

app()
