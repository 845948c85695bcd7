"""``gpucr doctor [--json]``: is this node ready for GPU-safe checkpoint/restore, and if not, the exact fix.

Each check reports ``ok``, ``info`` (a fact), ``warn`` (works, with a limit) or ``fail`` (a required piece is
missing: the exit status is then 1). The checks read the node and never change it: containerd (through CRI's
Version call) and its config, whether pod sandboxes can start (oom_score_adj), NRI, gpucr's plugin (its status file,
``STATE_DIR/plugin.json``), each runtime handler's route (``install/runtime_config.py status``, what ``install/front.sh status`` prints), runc, CRIU, the
network-lock tools, cgroups, the CUDA driver and GPUs, THP, the snapshotter, the checkpoint root and the node config.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tomllib
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

__all__ = ["Check", "Doctor", "parse_duration", "register"]

INSTALL = Path(__file__).resolve().parents[2] / "install"
DEFAULT_ADDRESS = "/run/containerd/containerd.sock"
DEFAULT_CONTAINERD_CONFIG = Path("/etc/containerd/config.toml")
DEFAULT_KUBELET_CONFIG = Path("/var/lib/kubelet/config.yaml")
DEFAULT_NRI_SOCKET = "/var/run/nri/nri.sock"
#: the gpucr-criu package's launcher (packaging/build.sh)
PACKAGED_CRIU = Path("/usr/lib/gpucr/criu/criu")
NRI_KEY = "io.containerd.nri.v1.nri"
#: config version -> (CRI runtime plugin table, images plugin table holding the snapshotter)
_CRI = {2: ("io.containerd.grpc.v1.cri", "io.containerd.grpc.v1.cri"),
        3: ("io.containerd.cri.v1.runtime", "io.containerd.cri.v1.images")}
LOW_SPACE = 10 << 30
#: containerd's NRI defaults (1.7 and 2.x) and what gpucr needs: its CreateContainer answer (restore checks included:
#: NVML, a checkpoint's metadata and file sizes; the digests and staging run later, in the runc wrapper) must reach
#: containerd within plugin_request_timeout, and Configure + Synchronize within plugin_registration_timeout
NRI_TIMEOUTS = {"plugin_request_timeout": ("2s", 2.0), "plugin_registration_timeout": ("5s", 5.0)}


@dataclass
class Check:
    name: str
    status: str  # ok | info | warn | fail
    detail: str
    fix: str = ""
    data: dict[str, Any] = field(default_factory=dict)


@dataclass
class Doctor:
    address: str = DEFAULT_ADDRESS
    containerd_config: Path = DEFAULT_CONTAINERD_CONFIG
    node_config: Path | None = None
    kubelet_config: Path = DEFAULT_KUBELET_CONFIG
    runtimes: list[str] = field(default_factory=list)
    libcuda: str | None = None
    libnvml: str | None = None
    checks: list[Check] = field(default_factory=list)
    version: tuple[int, ...] | None = None
    doc: dict[str, Any] | None = None
    node: Any = None
    routes: dict[str, dict[str, Any]] = field(default_factory=dict)

    def add(self, name: str, status: str, detail: str, fix: str = "", /, **data: Any) -> None:
        self.checks.append(Check(name, status, detail, fix, data))

    def run(self) -> list[Check]:
        for step in (self.check_node_config, self.check_containerd, self.check_containerd_config,
                     self.check_oom_score_adj, self.check_nri, self.check_nri_timeouts, self.check_plugin,
                     self.check_routes, self.check_runc, self.check_criu, self.check_netlock,
                     self.check_cgroups, self.check_cuda, self.check_gpus, self.check_thp, self.check_snapshotter,
                     self.check_checkpoint_root):
            step()
        return self.checks

    # -- gpucr's own config --------------------------------------------------------------------------------------
    def check_node_config(self) -> None:
        from ..policy import load_config
        from ..policy.config import DEFAULT_CONFIG_PATH, ConfigError
        from ..policy.node_paths import check_node_paths

        path = self.node_config or Path(os.environ.get("GPUCR_CONFIG") or DEFAULT_CONFIG_PATH)
        if path != DEFAULT_CONFIG_PATH and not path.exists():
            self.node = load_config(None)
            self.add("node config", "fail", f"{path} does not exist", "give an existing --config / GPUCR_CONFIG, "
                     "or leave both unset for /etc/gpucr/config.toml")
            return
        try:
            self.node = load_config(path if path.exists() else None)
        except ConfigError as exc:
            self.node = load_config(None)
            self.add("node config", "fail", str(exc), f"fix {path} (keys: docs/configuration.md) or remove it to use "
                     "the defaults")
            return
        self.add("node config", "ok", f"{path} parses" if path.exists() else f"no {path}: every key has its default",
                 path=str(path))
        for problem in check_node_paths(self.node).problems:
            text, _, fix = problem.partition("; fix: ")
            self.add("node paths", "warn", text, fix)

    # -- containerd ----------------------------------------------------------------------------------------------
    def check_containerd(self) -> None:
        from ..cri import CriClient, CriError
        from ..host.node import parse_version

        if not Path(self.address).exists():
            self.add("containerd", "fail", f"no containerd socket at {self.address}",
                     "install and start containerd >= 1.7 (`systemctl enable --now containerd`), or pass --address "
                     "SOCKET for a containerd listening elsewhere")
            return
        try:
            with CriClient(self.address, timeout_s=5) as cri:
                v = cri.version()
        except CriError as exc:
            self.add("containerd", "fail", f"containerd at {self.address} does not answer CRI Version: {exc}",
                     "enable containerd's CRI plugin (remove \"cri\" from disabled_plugins in its config) and restart it")
            return
        self.version = parse_version(v.runtime_version)
        detail = f"{v.runtime_name} {v.runtime_version} at {self.address} (CRI {v.runtime_api_version})"
        if self.version is None or self.version < (1, 7):
            self.add("containerd", "fail", f"{detail}: NRI needs containerd >= 1.7",
                     "upgrade containerd to 1.7 or 2.x (Docker's containerd.io package or the release tarball); "
                     "Debian 12's containerd 1.6 has no NRI")
            return
        self.add("containerd", "ok", detail, version=v.runtime_version)

    def _major(self) -> int:
        if self.version:
            return self.version[0]
        return 2 if (self.doc or {}).get("version", 2) >= 3 else 1

    def check_containerd_config(self) -> None:
        p = self.containerd_config
        if not p.exists():
            self.doc = {}
            self.add("containerd config", "info", f"no {p}: containerd runs on its built-in defaults",
                     path=str(p))
            return
        try:
            self.doc = tomllib.loads(p.read_text())
        except (OSError, tomllib.TOMLDecodeError) as exc:
            self.doc = {}
            self.add("containerd config", "fail", f"{p} cannot be read as TOML: {exc}",
                     f"fix {p} (`containerd config dump` shows what containerd makes of it)")
            return
        ver = self.doc.get("version", 1)
        if "version" not in self.doc and "plugins" not in self.doc:
            self.add("containerd config", "ok", f"{p} (no version line: containerd reads it as version 1; it sets no "
                     "plugin options)", path=str(p), version=1)
            self.check_cri_enabled()
            return
        if ver not in _CRI:
            self.add("containerd config", "fail", f"{p} is a version {ver} config",
                     f"convert it: `containerd config migrate > {p}.new` and move it in place, then restart containerd")
            return
        self.add("containerd config", "ok", f"{p} (config version {ver})", path=str(p), version=ver)
        self.check_cri_enabled()

    def cri_disabled(self) -> list[str]:
        """The config's ``disabled_plugins`` entries that turn CRI off (the rule ``gpucr setup`` refuses by)."""
        from .setup import cri_disabled
        return cri_disabled(self.doc)

    def check_cri_enabled(self) -> None:
        off = self.cri_disabled()
        if off:
            self.add("CRI", "fail", f"containerd's CRI plugin is disabled in {self.containerd_config} (disabled_plugins"
                     f" = {json.dumps(self.doc['disabled_plugins'])}, as Docker's containerd.io package ships it): "
                     "kubelet and crictl cannot use this containerd, and gpucr's plugin sees only CRI containers",
                     f"`gpucr setup --apply --enable-cri --config {self.containerd_config}` (reverted by gpucr setup "
                     f"--revert), or take {json.dumps(off[0])} out of disabled_plugins; then restart containerd",
                     disabled=off)

    def check_oom_score_adj(self) -> None:
        """CRI gives every pod sandbox oom_score_adj -998; where root cannot lower it (no CAP_SYS_RESOURCE: nodes in
        containers or confined VMs, the H200 in bench/results/gpu_package.md) runc then fails every RunPodSandbox
        with "can't get final child's PID from pipe: EOF" unless containerd clamps it (restrict_oom_score_adj)."""
        if os.geteuid() != 0:
            self.add("oom_score_adj", "info", "not root: cannot tell whether containerd may lower oom_score_adj")
            return
        ver = (self.doc or {}).get("version", 2 if self._major() < 2 else 3)
        key = _CRI.get(ver, _CRI[2])[0]
        if self._plugin(key).get("restrict_oom_score_adj") is True:
            self.add("oom_score_adj", "ok", "containerd clamps pods' oom_score_adj to its own "
                     "(restrict_oom_score_adj = true)")
        elif can_lower_oom_score_adj():
            self.add("oom_score_adj", "ok", "root may lower oom_score_adj (CRI's pod sandboxes get -998)")
        else:
            self.add("oom_score_adj", "fail", "root cannot lower oom_score_adj here (no CAP_SYS_RESOURCE): runc "
                     "fails every pod sandbox (\"can't get final child's PID from pipe: EOF\")",
                     f"add restrict_oom_score_adj = true to [plugins.\"{key}\"] in {self.containerd_config}, then "
                     "restart containerd")

    def _plugin(self, key: str) -> dict[str, Any]:
        t = (self.doc or {}).get("plugins", {}).get(key, {})
        return t if isinstance(t, dict) else {}

    def nri_socket(self) -> str:
        return str(self._plugin(NRI_KEY).get("socket_path") or DEFAULT_NRI_SOCKET)

    def check_nri(self) -> None:
        from ..host.node import socket_accepts

        nri = self._plugin(NRI_KEY)
        sock = self.nri_socket()
        if self.cri_disabled():
            self.add("NRI", "fail", f"containerd's CRI plugin is disabled in {self.containerd_config}: NRI serves only "
                     "CRI containers", "fix the CRI check first")
            return
        if self.version is None and "disable" not in nri:
            self.add("NRI", "fail", "cannot tell whether NRI is on: containerd is not reachable and its config "
                     f"{self.containerd_config} does not say (1.7 defaults to off, 2.x to on)",
                     "fix the containerd check first")
            return
        major = self._major()
        disabled = nri.get("disable", major < 2)  # 1.7 ships NRI off, 2.x on
        if disabled:
            how = "run `gpucr setup --apply` (it enables NRI reversibly), or add"
            self.add("NRI", "fail", f"NRI is disabled in containerd's config {self.containerd_config}"
                     + (" (containerd 1.7 disables it by default)" if major < 2 and "disable" not in nri else ""),
                     f"{how} to {self.containerd_config}: [plugins.\"{NRI_KEY}\"] disable = false (socket_path = "
                     f"\"{sock}\"), then restart containerd (`systemctl restart containerd`)")
            return
        if self.version is None:
            self.add("NRI", "fail", f"enabled in {self.containerd_config}, but containerd is not running to serve "
                     f"{sock}", "fix the containerd check first")
            return
        why = socket_accepts(sock)
        if why:
            self.add("NRI", "fail", f"NRI is enabled in the config but its socket does not answer: {why}",
                     "restart containerd to apply its config (`systemctl restart containerd`), and check that "
                     "disable_connections is not true in the NRI section")
            return
        self.add("NRI", "ok", f"enabled, socket {sock} accepts connections", socket=sock)

    def check_nri_timeouts(self) -> None:
        """containerd's NRI timeouts: below its defaults gpucr's answers can come too late. A late CreateContainer
        answer is dropped: the container is created without gpucr's CRIU config and hooks, and a
        ``gpucr.io/restore-from`` container then fails to start (never starts fresh); a late registration keeps
        the plugin out."""
        nri = self._plugin(NRI_KEY)
        where = f"[plugins.\"{NRI_KEY}\"] in {self.containerd_config}"
        for key, (default, need) in NRI_TIMEOUTS.items():
            raw = nri.get(key)
            secs = parse_duration(str(raw)) if raw is not None else need
            shown = f"{raw} (set in {self.containerd_config})" if raw is not None else f"{default} (containerd's default)"
            if secs is None:
                self.add(f"NRI {key}", "warn", f"NRI {key} = {raw!r} is not a duration containerd accepts",
                         f"set {key} = \"{default}\" (or more) in {where}, then restart containerd", value=str(raw))
            elif secs < need:
                why = ("gpucr's CreateContainer answer (for a restore: NVML and the checkpoint's metadata) can come "
                       "later; containerd then drops it and creates the container without gpucr's CRIU config and "
                       "hooks (a gpucr.io/restore-from container fails to start)" if key == "plugin_request_timeout"
                       else "gpucr's plugin may not finish Configure and Synchronize (it reads every container's "
                       "record) in time and is then not registered")
                self.add(f"NRI {key}", "warn", f"NRI {key} is {shown}, below the {default} gpucr needs: {why}",
                         f"set {key} = \"{default}\" (or more) in {where}, then restart containerd", seconds=secs)
            else:
                self.add(f"NRI {key}", "ok", f"NRI {key} is {shown}: enough for gpucr (needs {default}; restores "
                         "stage in the runc wrapper, outside the NRI call)" if key == "plugin_request_timeout" else
                         f"NRI {key} is {shown}: enough for gpucr (needs {default})", seconds=secs)

    def check_plugin(self) -> None:
        from ..handlers.plugin_status import read_status

        st = read_status(self.node.state_dir)
        start = ("`systemctl enable --now gpucr-plugin` (package), or run `gpucr plugin --socket "
                 f"{self.nri_socket()}` as root")
        if st is None:
            self.add("gpucr plugin", "fail", f"gpucr's NRI plugin is not running (no live "
                     f"{self.node.state_dir}/plugin.json)", f"start it: {start}")
            return
        if not st.get("registered"):
            self.add("gpucr plugin", "fail", f"gpucr's NRI plugin (pid {st['pid']}) is running but not registered "
                     f"with containerd at {st.get('socket')}", "fix the NRI check above; the plugin reconnects by "
                     "itself", **st)
            return
        if st.get("mode") == "external" and os.path.realpath(st.get("socket", "")) != os.path.realpath(
                self.nri_socket()):
            self.add("gpucr plugin", "warn", f"plugin {st.get('name')} (pid {st['pid']}) is registered through "
                     f"{st.get('socket')}, not this containerd's NRI socket {self.nri_socket()}",
                     f"run it with --socket {self.nri_socket()}", **st)
            return
        self.add("gpucr plugin", "ok", f"{st.get('name')} (pid {st['pid']}, {st.get('mode')}) registered through "
                 f"{st.get('socket')}", **st)

    # -- runtime handlers ----------------------------------------------------------------------------------------
    def _handlers(self) -> tuple[dict[str, Any], str]:
        ver = (self.doc or {}).get("version", 2 if self._major() < 2 else 3)
        cri = self._plugin(_CRI.get(ver, _CRI[2])[0]).get("containerd", {})
        handlers = cri.get("runtimes", {}) if isinstance(cri, dict) else {}
        return (handlers if isinstance(handlers, dict) else {}), str(cri.get("default_runtime_name") or "runc")

    def check_routes(self) -> None:
        handlers, default = self._handlers()
        wanted = self.runtimes or [default]
        if self.cri_disabled():
            for name in wanted:
                self.add(f"route {name}", "fail", f"no runtime handler '{name}': containerd's CRI plugin is disabled "
                         f"in {self.containerd_config}", "fix the CRI check first")
            return
        for name in sorted(set(handlers) | set(wanted)):
            required = name in wanted
            fix = f"`gpucr setup --apply --config {self.containerd_config} --runtime {name}`, then restart containerd"
            if name not in handlers:
                where = f"in {self.containerd_config}" if self.containerd_config.exists() else \
                    f"configured (no {self.containerd_config}: containerd's built-in handler)"
                self.add(f"route {name}", "fail" if required else "info",
                         f"runtime handler '{name}' is not {where}: it runs plain runc, without gpucr's CRIU front",
                         fix)
                continue
            r = subprocess.run([sys.executable, str(INSTALL / "runtime_config.py"), "status",
                                str(self.containerd_config), name, "--json"], capture_output=True, text=True)
            if r.returncode != 0:
                self.add(f"route {name}", "fail" if required else "warn", r.stderr.strip(), fix)
                continue
            c = json.loads(r.stdout)
            self.routes[name] = c
            final = c.get("target") or c["chain"][-1]
            if c["gpucr"]:
                self.add(f"route {name}", "ok", f"{name} -> {c['wrapper']} (gpucr) -> {final}; criu -> "
                         f"{c.get('front')} -> {c.get('real_criu') or '/usr/sbin/criu'}", **c)
                self._check_annotations(name, c)
            else:
                self.add(f"route {name}", "fail" if required else "info",
                         f"{name} runs {final} directly: checkpoints through it (kubelet, crictl, ctr) are not "
                         "GPU-safe" + ("" if required else " (not a handler gpucr was asked to check)"),
                         fix if required else "", **c)

    def _check_annotations(self, name: str, c: dict[str, Any]) -> None:
        """A routed handler must pass gpucr.io/restore-from into the OCI spec, or the runc wrapper cannot refuse a
        restore the plugin never checked (created while it was down): the container would start fresh."""
        have = c.get("container_annotations") or []
        if c.get("passes_restore_from"):
            self.add(f"annotations {name}", "ok", f"container_annotations {have} pass gpucr.io/restore-from into "
                     "the OCI spec", container_annotations=have)
            return
        self.add(f"annotations {name}", "warn",
                 f"runtime handler '{name}' is routed through gpucr but its container_annotations ({have or 'none'}) "
                 "do not pass gpucr.io/restore-from into the OCI spec: a container created with it while gpucr's "
                 "plugin is down starts fresh instead of failing",
                 f"in {self.containerd_config} set {c.get('annotations_fix')}, then restart containerd (or run "
                 f"`gpucr setup --apply --config {self.containerd_config} --runtime {name}` again)",
                 container_annotations=have)

    def _default_route(self) -> dict[str, Any] | None:
        handlers, default = self._handlers()
        for name in self.runtimes or [default]:
            if name in self.routes:
                return self.routes[name]
        return None

    def check_runc(self) -> None:
        from ..host.node import tool_version

        route = self._default_route()
        target = (route or {}).get("target") or (route or {}).get("chain", ["runc"])[-1]
        if target and os.path.basename(target) != "runc":
            self.add("runc", "info", f"the handler runs {target} (it execs runc itself)")
            target = "runc"
        path, line = tool_version(target or "runc", "--version")
        if path is None:
            self.add("runc", "fail", line, "install runc >= 1.1 (`apt-get install runc`)")
            return
        self.add("runc", "ok", f"{path}: {line}", path=path)

    def _criu(self) -> tuple[str, str]:
        route = self._default_route()
        if route and route.get("real_criu"):
            return route["real_criu"], "the real criu the front of the routed handler runs"
        if PACKAGED_CRIU.exists():
            return str(PACKAGED_CRIU), "gpucr-criu's CRIU (the package used only by gpucr)"
        return "criu", "criu on PATH (no route and no gpucr-criu package)"

    def check_criu(self) -> None:
        from ..host.node import parse_version, tool_version

        criu, why = self._criu()
        path, line = tool_version(criu, "--version")
        fix = "install gpucr's CRIU package (gpucr-criu) or CRIU >= 4.2 from your distribution"
        if path is None:
            self.add("CRIU", "fail", f"{line} ({why})", fix)
            return
        v = parse_version(line)
        if v is None or v < (4, 1):
            self.add("CRIU", "fail", f"{path} is {line}: gpucr needs CRIU >= 4.1 ({why})", fix)
            return
        kernel = parse_version(platform.release()) or (0, 0)
        if v < (4, 2) and kernel >= (6, 16):
            self.add("CRIU", "warn", f"{path} {line} ({why}): CRIU 4.1 cannot dump TCP/UDP sockets on kernel "
                     f"{platform.release()}", fix)
        else:
            self.add("CRIU", "ok", f"{path} {line} ({why})", path=path)
        try:
            r = subprocess.run([path, "check"], capture_output=True, text=True, timeout=60)
        except (OSError, subprocess.TimeoutExpired) as exc:
            self.add("criu check", "fail", f"{path} check failed: {exc}", "run it by hand as root to see why")
            return
        out = (r.stdout + r.stderr).strip().splitlines()
        if r.returncode != 0:
            self.add("criu check", "fail", f"{path} check: {out[-1] if out else f'exit {r.returncode}'}",
                     f"run `{path} check` as root; it names the kernel feature missing")
        else:
            self.add("criu check", "ok", out[-1] if out else "passed")

    def check_netlock(self) -> None:
        import shutil

        conf = Path(getattr(self.node, "runc_criu_config", "/etc/criu/runc.conf"))
        try:
            nft = "nftables" in conf.read_text()
        except OSError:
            nft = False
        if nft:
            self.add("network lock", "ok", f"{conf} selects nftables (CRIU's libnftables)")
        elif shutil.which("iptables-restore"):
            self.add("network lock", "ok", f"{shutil.which('iptables-restore')} (CRIU locks host-network TCP with "
                     "it)")
        else:
            self.add("network lock", "warn", "neither iptables-restore nor `network-lock nftables` in "
                     f"{conf}: host-network containers with TCP connections cannot be dumped",
                     f"`apt-get install iptables`, or add the line `network-lock nftables` to {conf}")

    def check_cgroups(self) -> None:
        import re

        from ..host.node import cgroup_version

        v = cgroup_version()
        route = self._default_route()
        handlers, default = self._handlers()
        name = (route or {}).get("runtime") or default
        opts = handlers.get(name, {}).get("options", {}) if isinstance(handlers.get(name), dict) else {}
        ours = "systemd" if isinstance(opts, dict) and opts.get("SystemdCgroup") else "cgroupfs"
        detail = (f"cgroup v{v}" if v else "no cgroup filesystem mounted at /sys/fs/cgroup") + \
            f", handler '{name}' uses the {ours} driver"
        try:
            m = re.search(r"^cgroupDriver:\s*\"?(\w+)", self.kubelet_config.read_text(), re.M)
        except OSError:
            self.add("cgroups", "ok" if v else "warn", f"{detail} (no kubelet config at {self.kubelet_config})")
            return
        kubelet = m.group(1) if m else "cgroupfs"
        if kubelet != ours:
            self.add("cgroups", "fail", f"{detail}, kubelet ({self.kubelet_config}) uses {kubelet}",
                     f"make them agree: SystemdCgroup = {str(kubelet == 'systemd').lower()} in handler '{name}' "
                     f"options of {self.containerd_config}, or cgroupDriver: {ours} in {self.kubelet_config}")
            return
        self.add("cgroups", "ok", f"{detail}, as kubelet does")

    # -- GPU -----------------------------------------------------------------------------------------------------
    def check_cuda(self) -> None:
        from ..ckpt.cuda import _lib
        from ..ckpt.cuda.driver import CudaError, Driver, format_api_version

        path = self.libcuda or self.node.libcuda or _lib.DEFAULT_LIBCUDA
        try:
            lib = _lib.load_libcuda(path)
        except OSError as exc:
            self.add("CUDA driver", "warn", f"cannot load {path}: {exc}: GPU containers cannot be checkpointed here "
                     "(CPU containers can)", "install the NVIDIA driver >= 570 (580+ to restore onto other GPUs), or "
                     "set libcuda in the node config")
            return
        missing = [s for s in _lib.CHECKPOINT_SYMBOLS if not lib.has(s)]
        if missing:
            self.add("CUDA driver", "fail", f"{path} lacks {', '.join(missing)}: the driver is older than 570",
                     "upgrade the NVIDIA driver to 570 or newer")
            return
        try:
            api = Driver(path).api_version
        except CudaError as exc:
            self.add("CUDA driver", "fail", str(exc), "see the message")
            return
        complete = lib.has(_lib.CUSTOM_STORAGE_SYMBOL)
        self.add("CUDA driver", "ok", f"{path}: CUDA {format_api_version(api)}, checkpoint API present; "
                 f"cuCheckpointOperationComplete {'exported' if complete else 'absent'}", api=api,
                 operation_complete=complete)

    def check_gpus(self) -> None:
        from ..ckpt.cuda.nvml import Nvml, NvmlError

        try:
            nvml = Nvml(self.libnvml)
            gpus = nvml.gpus()
            drv = nvml.driver_version()
        except NvmlError as exc:
            self.add("GPUs", "info", f"no GPU seen through NVML ({exc})")
            return
        self.add("GPUs", "ok" if gpus else "info", f"driver {drv}: " + (", ".join(
            f"{g.index}: {g.name} {g.uuid}" for g in gpus) or "no GPU"), gpus=[asdict(g) for g in gpus])

    def check_thp(self) -> None:
        from ..host.node import thp_mode

        mode = thp_mode()
        want = getattr(self.node, "driver_thp", "keep")
        ran = "always" if want == "always" else (mode or "unknown")
        held = sorted(p.name for p in Path(self.node.state_dir, "thp").glob("holder-*"))
        text = (f"transparent hugepages: {mode or 'unknown'}; the CUDA driver's copies run with {ran} (node config "
                f"driver_thp = {want!r}")
        text += ": set to always only during the copies, then restored)" if want == "always" else \
            "; \"always\" copies 1.5-1.8x faster)"
        if held:
            text += f"; {len(held)} checkpoint(s) hold the boost now"
        self.add("THP", "info", text, mode=mode, driver_thp=want, driver_stage_mode=ran, holders=len(held))

    def check_snapshotter(self) -> None:
        from ..host.node import overlay_params

        ver = (self.doc or {}).get("version", 2 if self._major() < 2 else 3)
        images = self._plugin(_CRI.get(ver, _CRI[2])[1])
        table = images.get("containerd", images) if ver == 2 else images
        snap = str((table or {}).get("snapshotter") or "overlayfs")
        if snap != "overlayfs":
            self.add("snapshotter", "info", f"{snap} (not overlayfs)")
            return
        params = overlay_params()
        handles = params.get("nfs_export") == "Y" and params.get("index") == "Y"
        self.add("snapshotter", "ok" if handles else "info",
                 f"overlayfs; overlay index={params.get('index', '?')} nfs_export={params.get('nfs_export', '?')}: "
                 + ("file handles are stable, CRIU can reopen inotify watches by handle" if handles else
                    "CRIU cannot reopen files by handle on a container's rootfs; containers with inotify watches need "
                    "gpucr.io/force-irmap: \"true\""), **params)

    def check_checkpoint_root(self) -> None:
        from ..host.node import free_bytes
        from ..host.paths import DIR, root_path_problem

        root = str(self.node.checkpoint_root)
        problem = root_path_problem(root, DIR, required=False)
        if problem is not None:
            self.add("checkpoint root", "fail", f"{root}: {problem}",
                     f"chown root:root {problem.component}; chmod go-w {problem.component}" if problem.unsafe else
                     f"mkdir -m 0700 -p {root}")
            return
        free = free_bytes(root)
        text = f"{root}: root-only" + ("" if Path(root).exists() else " (created at the first checkpoint)") + \
            (f", {free / (1 << 30):.1f} GiB free" if free is not None else "")
        if free is not None and free < LOW_SPACE:
            self.add("checkpoint root", "warn", text + ": a GPU checkpoint holds the process's host and GPU memory",
                     f"free space on {root}'s file system or set checkpoint_root elsewhere", free_bytes=free)
            return
        self.add("checkpoint root", "ok", text, free_bytes=free)


def can_lower_oom_score_adj() -> bool:
    """Whether this process's user may set a negative oom_score_adj (tried in a child shell, which then exits)."""
    try:
        return subprocess.run(["sh", "-c", "echo -998 > /proc/self/oom_score_adj"], capture_output=True,
                              timeout=10).returncode == 0
    except (OSError, subprocess.TimeoutExpired):
        return False


_MARK = {"ok": "ok", "info": "--", "warn": "!!", "fail": "XX"}


def parse_duration(text: str) -> float | None:
    """A Go duration as containerd's config takes it ("2s", "500ms", "1m30s"), in seconds; None when malformed."""
    import re
    units = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "ms": 1e-3, "s": 1.0, "m": 60.0, "h": 3600.0}
    parts = re.findall(r"(\d+(?:\.\d+)?)(ns|us|µs|ms|s|m|h)", text.strip())
    if not parts or "".join(n + u for n, u in parts) != text.strip():
        return 0.0 if text.strip() == "0" else None
    return sum(float(n) * units[u] for n, u in parts)


def render(checks: list[Check]) -> str:
    lines = []
    for c in checks:
        lines.append(f"[{_MARK[c.status]}] {c.name}: {c.detail}")
        if c.fix and c.status in ("warn", "fail"):
            lines.append(f"     fix: {c.fix}")
    failed = [c.name for c in checks if c.status == "fail"]
    lines.append(f"not ready: {len(failed)} required check(s) failed ({', '.join(failed)})" if failed else
                 "ready: every required check passed")
    return "\n".join(lines)


def register(sub: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    p = sub.add_parser("doctor", help="check that this node is ready for gpucr, with the fix for each problem")
    p.add_argument("--json", action="store_true", help="one JSON object: {ready, checks: [...]}")
    p.add_argument("--address", default=DEFAULT_ADDRESS, help=f"containerd's socket (default {DEFAULT_ADDRESS})")
    p.add_argument("--containerd-config", type=Path, default=DEFAULT_CONTAINERD_CONFIG,
                   help=f"containerd's config (default {DEFAULT_CONTAINERD_CONFIG})")
    p.add_argument("--config", type=Path, help="gpucr's node config (default $GPUCR_CONFIG or /etc/gpucr/config.toml)")
    p.add_argument("--kubelet-config", type=Path, default=DEFAULT_KUBELET_CONFIG,
                   help=f"kubelet's config, for its cgroup driver (default {DEFAULT_KUBELET_CONFIG})")
    p.add_argument("--runtime", action="append", default=[],
                   help="a runtime handler that must be routed through the front (repeatable; default: the CRI "
                        "default runtime, the one kubelet uses)")
    p.add_argument("--libcuda", default=os.environ.get("GPUCR_LIBCUDA") or None,
                   help="the CUDA driver library (default: the node config's libcuda, else libcuda.so.1)")
    p.add_argument("--libnvml", default=os.environ.get("GPUCR_LIBNVML") or None, help="NVML (default libnvidia-ml.so.1)")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    d = Doctor(address=args.address, containerd_config=args.containerd_config, node_config=args.config,
               kubelet_config=args.kubelet_config, runtimes=args.runtime, libcuda=args.libcuda, libnvml=args.libnvml)
    checks = d.run()
    ready = not any(c.status == "fail" for c in checks)
    if args.json:
        print(json.dumps({"ready": ready, "checks": [asdict(c) for c in checks]}, default=str))
    else:
        print(render(checks))
    return 0 if ready else 1
