"""The ``gpucr`` command line. Only this package reads flags and environment, configures logging or exits."""

from .main import main

__all__ = ["main"]
