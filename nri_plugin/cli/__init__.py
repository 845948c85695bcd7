"""The ``gpucr`` command line (``nri_plugin.cli.main:main``). Only this package reads flags and environment,
configures logging or exits. Nothing is imported here, so ``python -m nri_plugin.cli.main`` runs cleanly."""

__all__ = ["main"]
