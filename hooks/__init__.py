"""gpucr's entry points that other programs run: the CRIU front (``criu_front``) and, later, OCI hooks.

Thin: each reads its argv/env/config, sets up its log and calls the logic in ``nri_plugin``.
"""

__all__: list[str] = []
