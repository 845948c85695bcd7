"""install/front.sh: the product route (a runc wrapper as a runtime handler's BinaryName) keeps the runtime chain (the
wrapper execs the handler's previous BinaryName, or the runc found at install), runs the front from a root-owned
copy of the code, and uninstall puts the config back byte for byte, refusing when it was edited since. On a live
containerd restarted with it, a container runs through the wrapper AND the handler's previous runtime, and CRI and
ctr checkpoints go through the front while the daemon's own PATH keeps the real criu."""

from __future__ import annotations

import contextlib
import importlib.util
import json
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import tomllib
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from tests import testenv
from tests.testenv import one_error
from tests.ckpt._tcp import KERNEL_REFUSES_PASSCRED, kernel_version
from tests.conftest import VERSIONS
from tests.front.conftest import INSTANCE, REAL_CRIU, front_cuda_hooks

FRONT_SH = testenv.INSTALL / "front.sh"
RUNC = shutil.which("runc") or "/usr/sbin/runc"


def front_sh(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["bash", str(FRONT_SH), *args], capture_output=True, text=True)


def binary_names(config: Path, runtime: str = "runc") -> list[str | None]:
    doc = tomllib.loads(config.read_text())
    out = []

    def walk(d: object, trail: list[str]) -> None:
        if isinstance(d, dict):
            for k, v in d.items():
                if k == runtime and trail[-1:] == ["runtimes"]:
                    out.append((v.get("options") or {}).get("BinaryName"))
                walk(v, [*trail, k])
    walk(doc, [])
    return out


def recorder(d: Path, target: str = RUNC) -> tuple[Path, Path]:
    """A runtime that appends its arguments and PATH to a file, then execs ``target``: (the script, the file)."""
    log = d / "recorder.log"
    script = d / "recording-runtime"
    script.write_text(f'#!/bin/sh\necho "PATH=$PATH ARGS=$*" >> {log}\nexec {target} "$@"\n')
    script.chmod(0o755)
    return script, log


V2_NO_BINARYNAME = """version = 2
[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".containerd]
      [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]
        runtime_type = "io.containerd.runc.v2"
        [plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]
          SystemdCgroup = false
"""
V2_RELATIVE = V2_NO_BINARYNAME.replace("SystemdCgroup = false", 'BinaryName = "runc"  # from PATH\n          '
                                       "SystemdCgroup = false")
V3_BINARYNAME = """version = 3
# a GPU node: the NVIDIA runtime in front of runc
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]
  runtime_type = 'io.containerd.runc.v2'
  [plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]
    BinaryName = '{recorder}'
    SystemdCgroup = true
[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.other.options]
  BinaryName = '/usr/sbin/crun'
"""
V3_NO_OPTIONS = """version = 3
[plugins."io.containerd.cri.v1.runtime".containerd.runtimes.runc]
  runtime_type = "io.containerd.runc.v2"
[plugins."io.containerd.cri.v1.runtime".containerd]
  default_runtime_name = "runc"
"""

#: /etc/containerd/config.toml of Debian's and Ubuntu's containerd package (trixie's 2.1.9): no runtime handler
#: table, so containerd runs its built-in 'runc' (runtime_type io.containerd.runc.v2, no options)
DEBIAN_PACKAGE = """version = 2

[plugins]
  [plugins."io.containerd.grpc.v1.cri"]
    [plugins."io.containerd.grpc.v1.cri".cni]
      bin_dir = "/usr/lib/cni"
      conf_dir = "/etc/cni/net.d"
  [plugins."io.containerd.internal.v1.opt"]
    path = "/var/lib/containerd/opt"
"""


def _runtime_config() -> Any:
    """install/runtime_config.py (a script, not a package module) for its pure edit."""
    name = "gpucr_install_runtime_config"
    if name not in sys.modules:
        if str(testenv.INSTALL) not in sys.path:  # its sibling install/toml_edit.py, as the script finds it
            sys.path.append(str(testenv.INSTALL))
        spec = importlib.util.spec_from_file_location(name, testenv.INSTALL / "runtime_config.py")
        sys.modules[name] = importlib.util.module_from_spec(spec)  # type: ignore[arg-type]
        spec.loader.exec_module(sys.modules[name])  # type: ignore[union-attr]
    return sys.modules[name]


H3 = "[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options]"


#: the handler table install/front.sh adds (or completes) with container_annotations, for handlers defined only
#: through their options table
PASS3 = "\n[plugins.'io.containerd.cri.v1.runtime'.containerd.runtimes.runc]\n  container_annotations = [\"gpucr.io/*\"]\n"


@pytest.mark.parametrize("text, expected", [
    # a header with spaces and a comment; the commented-out BinaryName stays a comment
    (f"version = 3\n[ plugins . 'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options ]  # gpu\n"
     "    # BinaryName = '/old'\n    SystemdCgroup = true\n",
     "version = 3\n[ plugins . 'io.containerd.cri.v1.runtime'.containerd.runtimes.runc.options ]  # gpu\n"
     '    BinaryName = "/w/bin/runc"\n    # BinaryName = \'/old\'\n    SystemdCgroup = true\n' + PASS3),
    # a quoted key is replaced in place, the next table is untouched
    (f"version = 3\n{H3}\n  \"BinaryName\" = \"/usr/bin/nvidia-container-runtime\"\n[x]\n  BinaryName = 1\n",
     f'version = 3\n{H3}\n  BinaryName = "/w/bin/runc"\n[x]\n  BinaryName = 1\n' + PASS3),
    # an empty options table gets the line indented under its header
    (f"version = 3\n  {H3}\n", f'version = 3\n  {H3}\n    BinaryName = "/w/bin/runc"\n' + PASS3),
], ids=["spaced-header-commented-line", "quoted-key", "empty-table"])
def test_edit_changes_only_binaryname_and_annotations(text: str, expected: str) -> None:
    out, _ = _runtime_config().edit(text, "config.toml", "runc", "/w/bin/runc")
    assert out == expected


H2 = '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]'


@pytest.mark.parametrize("have, expected", [
    (None, '["gpucr.io/*"]'),
    ('["io.kubernetes.cri.*"]', '["io.kubernetes.cri.*", "gpucr.io/*"]'),  # merged, the admin's value kept
    ('["gpucr.io/restore-*"]', None),  # already passes gpucr.io/restore-from: unchanged
    ('["*"]', '["*", "gpucr.io/*"]'),  # containerd's path.Match: * stops at /
], ids=["none", "merged", "covered", "star"])
def test_edit_passes_gpucr_annotations_on_both_layouts(have: str | None, expected: str | None) -> None:
    rc = _runtime_config()
    for text in (V2_NO_BINARYNAME, V3_NO_OPTIONS):
        if have:
            text = text.replace('runtime_type = "io.containerd.runc.v2"\n',
                                f'runtime_type = "io.containerd.runc.v2"\n  container_annotations = {have}\n')
        out, _ = rc.edit(text, "config.toml", "runc", "/w/bin/runc")
        doc = tomllib.loads(out)
        handler = rc.dig(doc, [*rc.HANDLERS[doc["version"]], "runc"])
        assert handler["container_annotations"] == json.loads(expected or have), out
        assert handler["options"]["BinaryName"] == "/w/bin/runc"
        # nothing else changed: the edit is two lines (one where the handler had no options table)
        assert len({ln for ln in out.splitlines() if ln.strip()} - set(text.splitlines())) <= 3, out
    bad = V2_NO_BINARYNAME.replace('runtime_type = "io.containerd.runc.v2"\n',
                                   'runtime_type = "io.containerd.runc.v2"\n  container_annotations = "gpucr.io/*"\n')
    with pytest.raises(rc.InstallError, match="container_annotations of runtime handler 'runc' is not a list"):
        rc.edit(bad, "config.toml", "runc", "/w")
    assert H2 in V2_NO_BINARYNAME


def test_install_adds_annotations_to_an_older_install(tmp_path: Path, root_dir: Path) -> None:
    """A route installed by a gpucr before container_annotations (its record's config lacks them): installing
    again adds them and keeps the first copy, so uninstall still restores the original byte for byte; status and
    the JSON chain say whether the handler passes gpucr.io/restore-from."""
    config = tmp_path / "config.toml"
    config.write_text(V2_NO_BINARYNAME)
    route, prefix = root_dir / "route", root_dir / "lib"
    args = ["--config", str(config), "--dir", str(route), "--prefix", str(prefix), "--real-criu", str(REAL_CRIU)]
    r = front_sh("install", *args)
    assert r.returncode == 0 and "passes gpucr.io/* annotations" in r.stderr, r.stderr
    assert tomllib.loads(config.read_text())["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"][
        "runc"]["container_annotations"] == ["gpucr.io/*"]
    chain = json.loads(front_sh("status", "--config", str(config), "--json").stdout)
    assert chain["passes_restore_from"] is True and chain["container_annotations"] == ["gpucr.io/*"]
    # what an older install left: the config without the line, recorded as installed
    old = "".join(ln for ln in config.read_text().splitlines(keepends=True) if "container_annotations" not in ln)
    config.write_text(old)
    record = json.loads((route / "install.json").read_text())
    import hashlib
    record["sha256_installed"] = hashlib.sha256(old.encode()).hexdigest()
    (route / "install.json").write_text(json.dumps(record))
    status = front_sh("status", "--config", str(config)).stdout
    assert "gpucr.io/restore-from does not reach the OCI spec" in status and \
        f'fix: container_annotations = ["gpucr.io/*"] under [{H2[1:-1]}]' in status, status
    r = front_sh("install", *args)
    assert r.returncode == 0 and "now passes gpucr.io/* annotations into the OCI spec" in r.stderr, r.stderr
    assert config.read_text() == old.replace(f"{H2}\n", f'{H2}\n        container_annotations = ["gpucr.io/*"]\n')
    r = front_sh("uninstall", "--config", str(config), "--dir", str(route))
    assert r.returncode == 0, r.stderr
    assert config.read_text() == V2_NO_BINARYNAME


def test_edit_writes_out_containerds_builtin_runc_only_where_it_is_the_default() -> None:
    rc = _runtime_config()
    out, h = rc.edit(DEBIAN_PACKAGE, "config.toml", "runc", "/w/bin/runc")
    assert out == DEBIAN_PACKAGE + ('\n[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc]\n'
                                    '  runtime_type = "io.containerd.runc.v2"\n'
                                    '  container_annotations = ["gpucr.io/*"]\n\n'
                                    '[plugins."io.containerd.grpc.v1.cri".containerd.runtimes.runc.options]\n'
                                    '  BinaryName = "/w/bin/runc"\n')
    assert h.previous is None
    v3 = "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n  enable_cdi = true\n"
    out, _ = rc.edit(v3, "config.toml", "runc", "/w/bin/runc")
    assert tomllib.loads(out)["plugins"]["io.containerd.cri.v1.runtime"] == {
        "enable_cdi": True, "containerd": {"runtimes": {"runc": {"runtime_type": "io.containerd.runc.v2",
                                                                 "container_annotations": ["gpucr.io/*"],
                                                                 "options": {"BinaryName": "/w/bin/runc"}}}}}
    # another default runtime, or another handler name: nothing is invented, the error names the fix
    other = DEBIAN_PACKAGE + '    [plugins."io.containerd.grpc.v1.cri".containerd]\n      default_runtime_name = "nvidia"\n'
    for text, runtime in ((other, "runc"), (DEBIAN_PACKAGE, "kata")):
        with pytest.raises(rc.InstallError, match=f"has no runtime handler '{runtime}'"):
            rc.edit(text, "config.toml", runtime, "/w/bin/runc")


@pytest.mark.parametrize("original, expect_target", [
    (V2_NO_BINARYNAME, RUNC), (V2_RELATIVE, RUNC), (V3_BINARYNAME, "recorder"), (V3_NO_OPTIONS, RUNC),
    (DEBIAN_PACKAGE, RUNC)],
    ids=["v2-no-binaryname", "v2-relative-binaryname", "v3-binaryname", "v3-no-options-table", "debian-package"])
def test_install_keeps_chain_and_uninstall_restores_bytes(tmp_path: Path, root_dir: Path, original: str,
                                                          expect_target: str) -> None:
    rec, _ = recorder(tmp_path)
    target = str(rec) if expect_target == "recorder" else os.path.realpath(expect_target)
    config = tmp_path / "config.toml"
    config.write_text(original.replace("{recorder}", str(rec)))
    config.chmod(0o640)
    before = config.read_bytes()
    route, prefix = root_dir / "route", root_dir / "usr/lib/gpucr"
    args = ["--config", str(config), "--dir", str(route), "--prefix", str(prefix), "--real-criu", str(REAL_CRIU),
            "--log-dir", str(tmp_path / "log")]
    r = front_sh("install", *args)
    assert r.returncode == 0, r.stderr
    assert "restart containerd to apply" in r.stderr and "daemon's own PATH" in r.stderr
    wrapper = route / "bin/runc"
    assert binary_names(config) == [str(wrapper)]
    if "crun" in original:
        assert "BinaryName = '/usr/sbin/crun'" in config.read_text()  # other handlers untouched
    # the wrapper execs what the handler ran before (an absolute path), with the front first on PATH
    text = wrapper.read_text()
    assert f"PATH={route}/path:" in text and f'\nexec {target} "$@"\n' in text
    # the front is the root-owned copy's launcher, never the checkout
    assert os.readlink(route / "path/criu") == str(prefix / "hooks/criu_front.py")
    assert subprocess.run([str(route / "path/criu"), "--version"], capture_output=True, text=True).stdout.startswith(
        "Version: 4.")
    conf = (route / "path/front.conf").read_text()
    assert f"real_criu = {REAL_CRIU}" in conf and "hooks = nri_plugin.handlers.front_cuda:make" in conf
    for p in [route, *route.rglob("*"), prefix, *prefix.rglob("*")]:
        st = p.lstat()
        if stat.S_ISLNK(st.st_mode):
            continue
        assert (st.st_uid, st.st_gid) == (0, 0) and not st.st_mode & 0o022, p
        if p.is_dir():
            assert stat.S_IMODE(st.st_mode) == 0o755, p
    assert {p.relative_to(prefix).parts[0] for p in prefix.rglob("*.py")} == {"hooks", "nri_plugin"}
    assert not list(prefix.rglob("_pb")), "generated protobuf packages are not the front's code"
    assert stat.S_IMODE((prefix / "nri_plugin/front/config.py").stat().st_mode) == 0o644
    assert stat.S_IMODE((route / "config.before-gpucr").stat().st_mode) == 0o600
    # status: handler -> gpucr wrapper -> the previous runtime; criu -> front -> real criu
    status = front_sh("status", "--config", str(config)).stdout
    assert f"runc -> {wrapper} (gpucr runc wrapper) -> {target}" in status
    assert f"criu on its PATH -> {route}/path/criu" in status and f"-> {REAL_CRIU} (real criu)" in status
    chain = json.loads(front_sh("status", "--config", str(config), "--json").stdout)
    assert chain["chain"] == [str(wrapper), target] and chain["installed_by"] == str(route / "install.json")
    # installing again changes nothing and never wraps the wrapper
    installed = config.read_bytes()
    r = front_sh("install", *args)
    assert r.returncode == 0 and "(unchanged)" in r.stderr, r.stderr
    assert config.read_bytes() == installed and f'\nexec {target} "$@"\n' in wrapper.read_text()
    r = front_sh("uninstall", "--config", str(config), "--dir", str(route))
    assert r.returncode == 0, r.stderr
    assert config.read_bytes() == before and stat.S_IMODE(config.stat().st_mode) == 0o640
    assert not route.exists() and not prefix.exists()
    assert "gpucr's CRIU front is not installed" in front_sh("status", "--config", str(config)).stdout


def test_install_refuses_clearly(tmp_path: Path, root_dir: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(V2_NO_BINARYNAME)
    route, lib = root_dir / "r", root_dir / "lib"
    base = ["--dir", str(route), "--prefix", str(lib), "--real-criu", str(REAL_CRIU)]

    def refused(*args: str, text: str = V2_NO_BINARYNAME) -> str:
        config.write_text(text)
        line = one_error(front_sh("install", "--config", str(config), *base, *args))
        assert config.read_text() == text and not route.exists() and not lib.exists()
        return line

    line = refused("--runtime", "kata")
    assert "has no runtime handler 'kata'" in line and "handlers there: runc" in line and "--runtime" in line
    assert "version 1 containerd config" in refused(text="[plugins.cri]\n")
    inline = V3_NO_OPTIONS.replace('runtime_type = "io.containerd.runc.v2"',
                                   'runtime_type = "io.containerd.runc.v2"\n  options = { SystemdCgroup = true }')
    assert "are not written as a [" in refused(text=inline)
    assert "/nowhere/runc is missing or not executable" in refused(text=V2_RELATIVE.replace('"runc"', '"/nowhere/runc"'))
    assert "is not on PATH" in refused(text=V2_RELATIVE.replace('"runc"', '"no-such-runtime"'))
    assert "drop --runc" in refused("--runc", RUNC, text=V2_RELATIVE)
    # a runtime that is not root's to change: the wrapper would run it as root
    rec, _ = recorder(tmp_path)
    os.chown(rec, 65534, 65534)
    assert "chown root" in refused(text=V3_BINARYNAME.replace("{recorder}", str(rec)))
    # the handler already runs some gpucr wrapper: never wrap it again
    other = root_dir / "other"
    assert front_sh("route", "--dir", str(other), "--real-criu", str(REAL_CRIU)).returncode == 0
    assert "is a gpucr runc wrapper itself" in refused(text=V3_BINARYNAME.replace("{recorder}",
                                                                                  str(other / "bin/runc")))
    # the route or the code in a place others can change (a sticky one like /tmp too: the front would refuse to
    # run from it), or in the checkout
    config.write_text(V2_NO_BINARYNAME)
    for mode in (0o777, 0o1777):
        shared = root_dir / f"shared-{mode:o}"
        shared.mkdir()
        shared.chmod(mode)
        for where in (["--dir", str(shared / "r"), "--prefix", str(lib)], ["--dir", str(route), "--prefix",
                                                                             str(shared / "lib")]):
            line = one_error(front_sh("install", "--config", str(config), *where, "--real-criu", str(REAL_CRIU)))
            assert (f"would be changeable by others: {shared} is group- or world-writable (mode {mode:04o}); fix: "
                    f"chmod go-w {shared}") in line, line
            assert config.read_text() == V2_NO_BINARYNAME and os.listdir(shared) == [] and not route.exists()
    line = one_error(front_sh("install", "--config", str(config), "--dir", str(route), "--prefix",
                              str(testenv.REPO / "lib"), "--real-criu", str(REAL_CRIU)))
    assert "inside the checkout" in line and not (testenv.REPO / "lib").exists()
    old = tmp_path / "criu"
    old.write_text("#!/bin/sh\necho 'Version: 3.17.1'\n")
    old.chmod(0o755)
    line = one_error(front_sh("install", "--config", str(config), "--dir", str(route), "--real-criu", str(old)))
    assert "is version 3.17.1; gpucr needs CRIU >= 4.1" in line
    line = one_error(front_sh("uninstall", "--config", str(config), "--dir", str(route)))
    assert "was not installed by install/front.sh" in line
    assert config.read_text() == V2_NO_BINARYNAME


def test_uninstall_refuses_to_clobber_later_edits(tmp_path: Path, root_dir: Path) -> None:
    config = tmp_path / "config.toml"
    config.write_text(V2_NO_BINARYNAME)
    route, prefix = root_dir / "route", root_dir / "lib"
    args = ["--config", str(config), "--dir", str(route), "--prefix", str(prefix), "--real-criu", str(REAL_CRIU)]
    assert front_sh("install", *args).returncode == 0
    installed = config.read_text()
    edited = installed + '[plugins."io.containerd.grpc.v1.cri".registry]\n  config_path = "/etc/containerd/certs.d"\n'
    config.write_text(edited)
    line = one_error(front_sh("uninstall", "--config", str(config), "--dir", str(route)))
    assert "was edited since" in line and "config.before-gpucr" in line and "no BinaryName line" in line
    assert config.read_text() == edited and (route / "bin/runc").exists() and prefix.exists()
    # installing again leaves the edited config alone
    r = front_sh("install", *args)
    assert r.returncode == 0 and "was edited since install" in r.stderr and config.read_text() == edited
    # the admin undoes gpucr's line by hand: uninstall removes the route and leaves the config as it is
    by_hand = edited.replace(f'          BinaryName = "{route}/bin/runc"\n', "")
    config.write_text(by_hand)
    r = front_sh("uninstall", "--config", str(config), "--dir", str(route))
    assert r.returncode == 0 and "no longer runs" in r.stderr, r.stderr
    assert config.read_text() == by_hand and not route.exists() and not prefix.exists()


def test_symlinked_config_is_edited_in_place_and_a_lost_record_is_named(tmp_path: Path, root_dir: Path) -> None:
    real = tmp_path / "etc-real/config.toml"
    real.parent.mkdir()
    real.write_text(V2_NO_BINARYNAME)
    link = tmp_path / "config.toml"
    link.symlink_to(real)
    route = root_dir / "route"
    args = ["--config", str(link), "--dir", str(route), "--prefix", str(root_dir / "lib"), "--real-criu",
            str(REAL_CRIU)]
    assert front_sh("install", *args).returncode == 0
    assert link.is_symlink() and binary_names(real) == [str(route / "bin/runc")]
    assert front_sh("uninstall", "--config", str(link), "--dir", str(route)).returncode == 0
    assert link.is_symlink() and real.read_text() == V2_NO_BINARYNAME
    # the route directory removed by hand while the config still runs its wrapper: uninstall says so
    assert front_sh("install", *args).returncode == 0
    shutil.rmtree(route)
    line = one_error(front_sh("uninstall", "--config", str(link), "--dir", str(route)))
    assert "install record" in line and "is missing" in line and "set its BinaryName back by hand" in line


def test_routes_share_the_code_prefix(tmp_path: Path, root_dir: Path) -> None:
    prefix = root_dir / "lib"
    configs = []
    for name in ("a", "b"):
        c = tmp_path / f"{name}.toml"
        c.write_text(V2_NO_BINARYNAME)
        configs.append(c)
        r = front_sh("install", "--config", str(c), "--dir", str(root_dir / name), "--prefix", str(prefix),
                     "--real-criu", str(REAL_CRIU))
        assert r.returncode == 0, r.stderr
    r = front_sh("uninstall", "--config", str(configs[0]), "--dir", str(root_dir / "a"))
    assert r.returncode == 0 and f"still used by {root_dir}/b/path/criu" in r.stderr, r.stderr
    assert (prefix / "hooks/criu_front.py").exists()
    assert subprocess.run([str(root_dir / "b/path/criu"), "--version"], capture_output=True).returncode == 0
    assert front_sh("uninstall", "--config", str(configs[1]), "--dir", str(root_dir / "b")).returncode == 0
    assert not prefix.exists() and all(c.read_text() == V2_NO_BINARYNAME for c in configs)


def test_route_with_criu_41_warns_about_tcp_on_new_kernels(tmp_path: Path, root_dir: Path) -> None:
    """CRIU 4.1 is accepted (it works where the kernel allows), with a warning where TCP sockets cannot be dumped."""
    old = tmp_path / "criu"
    old.write_text("#!/bin/sh\necho 'Version: 4.1.1'\n")
    old.chmod(0o755)
    r = front_sh("route", "--dir", str(root_dir / "r"), "--real-criu", str(old), "--log-dir", str(tmp_path / "log"))
    assert r.returncode == 0, r.stderr
    warned = "cannot checkpoint containers with TCP/UDP sockets on kernels >= 6.16" in r.stderr
    assert warned == (kernel_version() >= KERNEL_REFUSES_PASSCRED), r.stderr
    r = front_sh("route", "--dir", str(root_dir / "r"), "--real-criu", str(REAL_CRIU), "--log-dir",
                 str(tmp_path / "log"))
    assert r.returncode == 0 and "warning" not in r.stderr, r.stderr


@contextlib.contextmanager
def live_containerd(version: str) -> Iterator[tuple[dict[str, Any], Callable[[], testenv.Containerd]]]:
    """A private containerd (no front on its PATH) and a function that restarts it the way install/containerd.sh
    started it (same env, config, log); stopped and removed afterwards."""
    env = {**os.environ, "GPUCR_INSTANCE": f"{INSTANCE}-route"}
    env.pop("GPUCR_CRIU_DIR", None)
    sh = testenv.INSTALL / "containerd.sh"
    r = subprocess.run(["bash", str(sh), "start", version], capture_output=True, text=True, env=env)
    if r.returncode != 0:
        subprocess.run(["bash", str(sh), "stop", version], capture_output=True, env=env)
        pytest.fail(f"containerd.sh start {version} failed:\n{r.stderr}", pytrace=False)
    info = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    d = Path(info["dir"])

    def restart() -> testenv.Containerd:
        pid = int((d / "containerd.pid").read_text())
        os.kill(pid, signal.SIGTERM)
        testenv.wait_for(lambda: not Path(f"/proc/{pid}").exists(), what="containerd to stop")
        prefix = Path(info["ctr"]).parent.parent.parent
        path = f"{info['bin_dir']}:{prefix}/usr/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
        r = subprocess.run(["bash", "-c", f'env -i PATH="{path}" TMPDIR="{d}/tmp" HOME=/root setsid '
                            f'"{prefix}/usr/bin/containerd" --config "{d}/config.toml" >>"{info["log"]}" 2>&1 '
                            '</dev/null & echo $!'], capture_output=True, text=True, check=True)
        (d / "containerd.pid").write_text(r.stdout.strip())
        info["pid"] = int(r.stdout.strip())
        ctrd = testenv.Containerd(info)
        testenv.wait_for(lambda: ctrd.ctr("version", check=False).returncode == 0, what="containerd to restart")
        return ctrd

    try:
        yield info, restart
    finally:
        subprocess.run(["bash", str(sh), "stop", version], capture_output=True, env=env)


@pytest.mark.integration
@pytest.mark.parametrize("version", VERSIONS)
def test_runtime_chain_on_live_containerd(version: str, tmp_path: Path) -> None:
    """The handler's BinaryName is a runtime that records each call: after install, containers run through the
    wrapper AND it; checkpoints pass through the front; uninstall gives back the config byte for byte."""
    rec, rec_log = recorder(tmp_path)
    with live_containerd(version) as (info, restart):
        # root's alone, as the front requires of the directories above its program and config (not under /tmp)
        route, prefix = Path(info["dir"]) / "front-route", Path(info["dir"]) / "front-lib"
        config = Path(info["dir"]) / "config.toml"
        config.write_text(re.sub(r'BinaryName = "[^"]*"', f'BinaryName = "{rec}"', config.read_text(), count=1))
        before = config.read_bytes()
        r = front_sh("install", "--config", str(config), "--dir", str(route), "--prefix", str(prefix),
                     "--real-criu", str(REAL_CRIU), "--log-dir", str(tmp_path / "log"), "--hooks", front_cuda_hooks())
        assert r.returncode == 0, r.stderr
        with (route / "path/front.conf").open("a") as f:  # the front's caches: root-only, beside the route (not in
            f.write(f"cache_dir = {Path(info['dir']) / 'front-cache'}\n")  # it: uninstall removes what install made)
        assert f"-> {route}/bin/runc (gpucr runc wrapper) -> {rec}" in front_sh("status", "--config",
                                                                                 str(config)).stdout
        ctrd = restart()
        log = tmp_path / "log/criu-front.log"
        with ctrd.pod() as (c, pod_id, cfg):
            cid = ctrd.run_container(c, pod_id, cfg, "counter", ["/bin/sh", "-c", "while :; do sleep 0.2; done"])
            calls = rec_log.read_text().splitlines()
            # runc's create ran through the wrapper (the front's dir first on PATH) and then the recorder
            assert any(" create " in ln and ln.startswith(f"PATH={route}/path:") for ln in calls), calls
            if ctrd.major_minor >= (2, 0):
                c.checkpoint_container(cid, str(tmp_path / "ckpt.tar"))
                text = log.read_text()
                assert "DUMP from runtime pid" in text, text
                # the daemon's own criu check used the real criu on its PATH, not the front
                assert f"runtime pid {ctrd.info['pid']}:" not in text
            mark = log.stat().st_size if log.exists() else 0
            ctrd.ctr("t", "checkpoint", "--image-path", str(tmp_path / "cri-img"), cid, namespace="k8s.io")
            assert "DUMP from runtime pid" in log.read_text()[mark:]
            assert any(" checkpoint " in ln for ln in rec_log.read_text().splitlines())
        # ctr: the wrapper as --runc-binary (saved with the container) also runs the recorder, then the front
        name = f"route-{uuid.uuid4().hex[:6]}"
        ctrd.ctr("run", "-d", "--null-io", "--runc-binary", str(route / "bin/runc"), "--cgroup",
                 f"{ctrd.cgroup_parent}/{name}", ctrd.image, name, "/bin/sh", "-c", "while :; do sleep 0.2; done")
        try:
            mark = log.stat().st_size
            ctrd.ctr("t", "checkpoint", "--image-path", str(tmp_path / "img"), name)
            assert "DUMP from runtime pid" in log.read_text()[mark:]
            assert any(name in ln and " checkpoint " in ln for ln in rec_log.read_text().splitlines())
        finally:
            ctrd.ctr("t", "kill", "-s", "KILL", name, check=False)
            ctrd.ctr("t", "rm", "-f", name, check=False)
            ctrd.ctr("c", "rm", name, check=False)
        r = front_sh("uninstall", "--config", str(config), "--dir", str(route))
        assert r.returncode == 0, r.stderr
        assert subprocess.run(["cmp", str(config), "-"], input=before).returncode == 0
        assert not route.exists() and not prefix.exists()
