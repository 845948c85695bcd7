"""gpucr: GPU-safe checkpoint/restore for containerd.

Layers (lower never imports upper): protocol (``ttrpc``, ``mux``, ``nri.api``, ``cri``) and engines
(``ckpt``) at the bottom, the plugin stub and policy above them, entry points (``cli``, ``hooks``) on top.
"""

__version__ = "0.1.0"
__all__ = ["__version__"]
