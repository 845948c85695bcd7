"""``gpucr doctor``'s oom_score_adj check: CRI gives pod sandboxes oom_score_adj -998, and where root cannot lower
it (no CAP_SYS_RESOURCE: this CI machine, the H200 in bench/results/gpu_package.md) runc fails every RunPodSandbox
unless containerd's CRI plugin has ``restrict_oom_score_adj = true``."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest

from nri_plugin.cli import doctor as doctor_mod
from nri_plugin.cli.doctor import Doctor

V2 = '[plugins]\n  [plugins."io.containerd.grpc.v1.cri"]\n{extra}    [plugins."io.containerd.grpc.v1.cri".cni]\n' \
     '      conf_dir = "/etc/cni/net.d"\n'
V3 = "version = 3\n[plugins.'io.containerd.cri.v1.runtime']\n{extra}  enable_cdi = true\n"


def check(tmp_path: Path, text: str) -> doctor_mod.Check:
    conf = tmp_path / "config.toml"
    conf.write_text(text)
    d = Doctor(containerd_config=conf)
    d.check_containerd_config()
    d.check_oom_score_adj()
    return d.checks[-1]


def test_probe_matches_the_kernel() -> None:
    r = subprocess.run(["sh", "-c", "echo -998 > /proc/self/oom_score_adj"], capture_output=True)
    assert doctor_mod.can_lower_oom_score_adj() is (r.returncode == 0)
    with open("/proc/self/oom_score_adj") as f:
        assert int(f.read()) >= 0, "the probe changes a child's oom_score_adj, never the doctor's own"


@pytest.mark.parametrize("template, table", [("version = 2\n" + V2, 'plugins."io.containerd.grpc.v1.cri"'),
                                             (V3, 'plugins."io.containerd.cri.v1.runtime"')], ids=["v2", "v3"])
def test_oom_score_adj(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, template: str, table: str) -> None:
    assert os.geteuid() == 0, "the check is root's (the tests run as root)"
    restricted = template.format(extra="    restrict_oom_score_adj = true\n")
    c = check(tmp_path, restricted)
    assert c.status == "ok" and "restrict_oom_score_adj = true" in c.detail
    monkeypatch.setattr(doctor_mod, "can_lower_oom_score_adj", lambda: False)
    c = check(tmp_path, template.format(extra=""))
    assert c.status == "fail" and "can't get final child's PID from pipe: EOF" in c.detail
    assert c.fix == (f"add restrict_oom_score_adj = true to [{table}] in {tmp_path / 'config.toml'}, then restart "
                     "containerd")
    assert check(tmp_path, restricted).status == "ok"
    monkeypatch.setattr(doctor_mod, "can_lower_oom_score_adj", lambda: True)
    c = check(tmp_path, template.format(extra=""))
    assert c.status == "ok" and "may lower" in c.detail
