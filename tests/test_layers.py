"""Architecture checks: lower layers never import upper ones, and each package states its public names.

Layers: errors < protocol (ttrpc, mux, nri, cri, containerd, front), policy, engines (ckpt, host) < joiners
(handlers) < entry points (cli; hooks/ outside the package).
Checked statically (AST) on every module of the package, so a violation fails CI with the offending import.
"""

from __future__ import annotations

import ast
import importlib
import importlib.util
from pathlib import Path

import pytest

PKG = Path(__file__).resolve().parent.parent / "nri_plugin"

# module prefix -> prefixes it must never import
FORBIDDEN: dict[str, tuple[str, ...]] = {
    "nri_plugin.errors": ("nri_plugin.",),
    "nri_plugin.ttrpc": ("nri_plugin.mux", "nri_plugin.nri", "nri_plugin.ckpt", "nri_plugin.front",
                         "nri_plugin.cli", "nri_plugin.policy", "nri_plugin.cri"),
    "nri_plugin.mux": ("nri_plugin.nri", "nri_plugin.ckpt", "nri_plugin.front", "nri_plugin.cli",
                       "nri_plugin.policy", "nri_plugin.cri"),
    "nri_plugin.nri": ("nri_plugin.ckpt", "nri_plugin.front", "nri_plugin.cli", "nri_plugin.policy"),
    "nri_plugin.cri": ("nri_plugin.ttrpc", "nri_plugin.mux", "nri_plugin.nri", "nri_plugin.ckpt",
                       "nri_plugin.front", "nri_plugin.cli", "nri_plugin.policy"),
    "nri_plugin.containerd": ("nri_plugin.ttrpc", "nri_plugin.mux", "nri_plugin.nri", "nri_plugin.ckpt",
                              "nri_plugin.front", "nri_plugin.cli", "nri_plugin.policy", "nri_plugin.cri"),
    "nri_plugin.ckpt": ("nri_plugin.ttrpc", "nri_plugin.mux", "nri_plugin.nri", "nri_plugin.front",
                        "nri_plugin.cli", "nri_plugin.policy"),
    "nri_plugin.front": ("nri_plugin.cli", "nri_plugin.policy"),
    # the host read as files: below everything but errors
    "nri_plugin.host": ("nri_plugin.ttrpc", "nri_plugin.mux", "nri_plugin.nri", "nri_plugin.cri",
                        "nri_plugin.containerd", "nri_plugin.ckpt", "nri_plugin.front", "nri_plugin.cli",
                        "nri_plugin.policy", "nri_plugin.handlers"),
    # the joiners may import anything below the entry points
    "nri_plugin.handlers": ("nri_plugin.cli",),
    "nri_plugin.policy": ("nri_plugin.cli", "nri_plugin.front"),
}
# pure (sans-I/O) modules: no event loop, sockets, ctypes or logging
PURE_SUFFIXES = ("_frame", ".nri.api", ".criu.rpc")
IMPURE = ("asyncio", "socket", "ctypes", "logging")


def _modules() -> list[tuple[str, Path]]:
    out = []
    for path in sorted(PKG.rglob("*.py")):
        if "_pb" in path.parts:
            continue
        rel = path.relative_to(PKG.parent).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out.append((".".join(parts), path))
    return out


def _imports(name: str, path: Path) -> set[str]:
    tree = ast.parse(path.read_text(), str(path))
    pkg = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = pkg.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            found.add(mod)
            found.update(f"{mod}.{a.name}" for a in node.names)
    return found


@pytest.mark.parametrize("name,path", _modules(), ids=[m for m, _ in _modules()])
def test_layering(name: str, path: Path) -> None:
    imports = _imports(name, path)
    for prefix, banned in FORBIDDEN.items():
        if name == prefix or name.startswith(prefix + "."):
            bad = sorted(i for i in imports for b in banned if (i + ".").startswith(b if b.endswith(".") else b + "."))
            assert not bad, f"{name} imports upper layer: {bad}"
    if not name.startswith("nri_plugin.cli"):
        assert not any(i == "nri_plugin.cli" or i.startswith("nri_plugin.cli.") for i in imports), name
    if not name.startswith(("nri_plugin.cli", "nri_plugin.handlers")):
        # only the entry points reach the joiners
        bad = sorted(i for i in imports if i == "nri_plugin.handlers" or i.startswith("nri_plugin.handlers."))
        assert not bad, f"{name} imports the joiners: {bad}"
    if name.endswith(PURE_SUFFIXES) or ".api." in name + ".":
        if ".nri.api" in name or name.endswith(PURE_SUFFIXES):
            bad = sorted(i for i in imports if i.split(".")[0] in IMPURE)
            assert not bad, f"pure module {name} imports {bad}"
    if "ctypes" in {i.split(".")[0] for i in imports}:
        # and the front's pidfd_getfd(2) and the memory stage's mount(2)/umount2(2), which Python lacks
        # (nri_plugin/front/_pidfd.py, nri_plugin/host/_mount.py)
        assert name.endswith(("ckpt.cuda._lib", "front._pidfd", "host._mount")), \
            f"ctypes belongs in nri_plugin/ckpt/cuda/_lib.py (and front/_pidfd.py, host/_mount.py) only, not {name}"


def test_handlers_reached_only_from_entry_points() -> None:
    """hooks/ (outside the package) may import the joiners; the package's lower layers never do (test_layering)."""
    hook = _imports("hooks.oci_hook", PKG.parent / "hooks" / "oci_hook.py")
    assert "nri_plugin.handlers.oci_records" in hook
    assert _imports("nri_plugin.handlers", PKG / "handlers" / "__init__.py") == set()


def test_host_start_up_path_is_cheap() -> None:
    """host/__init__ imports nothing, host/proc only os and errors, host/paths only os and stat: the CRIU front
    imports proc on every dump and paths (through front/trust) on every start."""
    assert _imports("nri_plugin.host", PKG / "host" / "__init__.py") == set()
    paths = _imports("nri_plugin.host.paths", PKG / "host" / "paths.py")
    assert {i.split(".")[0] for i in paths} <= {"__future__", "os", "stat", "sys"}, paths  # sys: run as a script
    proc = _imports("nri_plugin.host.proc", PKG / "host" / "proc.py")
    assert {i.split(".")[0] for i in proc} <= {"__future__", "os", "signal", "collections", "nri_plugin"}, proc
    assert {i for i in proc if i.startswith("nri_plugin")} <= {"nri_plugin.errors", "nri_plugin.errors.GpucrError"}


@pytest.mark.parametrize("name", [m for m, p in _modules() if p.name == "__init__.py"])
def test_package_declares_all(name: str) -> None:
    mod = importlib.import_module(name)
    assert isinstance(getattr(mod, "__all__", None), list), f"{name} has no __all__ list"
    for attr in mod.__all__:
        # a name, or a submodule (packages on a start-up path list their modules without importing them)
        assert hasattr(mod, attr) or importlib.util.find_spec(f"{name}.{attr}") is not None, \
            f"{name}.__all__ names {attr!r}, which it does not define"
