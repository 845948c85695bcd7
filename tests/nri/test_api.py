"""NRI API helpers: event masks, adjustment builders, the handler table, exports."""

from __future__ import annotations

import importlib

import pytest

from nri_plugin.nri import (EVENT_HANDLERS, Adjustment, Event, EventMask, PluginError, container_update, hook,
                            implemented_events, parse_plugin_name, pb)
from nri_plugin.nri.api import VALID_EVENTS_V03, mask_names, mask_of
from nri_plugin.nri.plugin import create_response


def test_event_bits_match_the_fact_sheet() -> None:
    assert Event.CREATE_CONTAINER.bit | Event.STOP_CONTAINER.bit == 0x208
    assert mask_of(Event(n) for n in range(1, 12)) == VALID_EVENTS_V03 == 0x7FF
    assert mask_names(0x208) == ["create_container", "stop_container"]
    assert all(EventMask[e.name] == e.bit for e in Event if e.value)
    assert {r.rpc for r in EVENT_HANDLERS.values()} >= {"CreateContainer", "StopContainer", "UpdateContainer",
                                                         "RunPodSandbox", "RemoveContainer"}


class Some:
    async def create_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None: ...

    async def remove_pod_sandbox(self, pod: pb.PodSandbox) -> None: ...

    async def unrelated(self) -> None: ...


class SyncHandler:
    def create_container(self, pod: pb.PodSandbox, ctr: pb.Container) -> None: ...


def test_mask_from_methods() -> None:
    assert implemented_events(Some()) == EventMask.CREATE_CONTAINER | EventMask.REMOVE_POD_SANDBOX
    assert implemented_events(object()) == 0
    with pytest.raises(PluginError, match="must be 'async def'"):
        implemented_events(SyncHandler())


def test_adjustment_builder_and_removals() -> None:
    a = (Adjustment().add_annotation("a", "1").remove_annotation("old").add_env("E", "v").remove_env("X")
         .add_mount("/host", "/ctr", options=["rbind", "ro"]).remove_mount("/gone")
         .add_hook("prestart", hook("/bin/true", ["true"], timeout_s=3))
         .add_device("/dev/null", "c", 1, 3, file_mode=0o666).remove_device("/dev/x").add_rlimit("RLIMIT_NOFILE", 9, 8))
    p = a.pb
    assert dict(p.annotations) == {"a": "1", "-old": ""}
    assert [(kv.key, kv.value) for kv in p.env] == [("E", "v"), ("-X", "")]
    assert [m.destination for m in p.mounts] == ["/ctr", "-/gone"]
    assert p.hooks.prestart[0].timeout.value == 3 and p.hooks.prestart[0].HasField("timeout")
    assert [d.path for d in p.linux.devices] == ["/dev/null", "-/dev/x"]
    assert p.linux.devices[0].file_mode.value == 0o666 and not p.linux.devices[0].HasField("uid")
    with pytest.raises(ValueError, match="unknown OCI hook kind"):
        a.add_hook("later", hook("/x"))
    # ContainerAdjustment field numbers from the fact sheet (field 1 never used)
    fields = {f.name: f.number for f in pb.ContainerAdjustment.DESCRIPTOR.fields}
    assert fields == {"annotations": 2, "mounts": 3, "env": 4, "hooks": 5, "linux": 6, "rlimits": 7,
                      "CDI_devices": 8, "args": 9}


def test_create_response_forms() -> None:
    u = container_update("c1")
    assert create_response(None) == pb.CreateContainerResponse()
    assert create_response(Adjustment().add_env("A", "b")).adjust.env[0].key == "A"
    assert create_response((pb.ContainerAdjustment(), [u])).update[0].container_id == "c1"
    with pytest.raises(PluginError, match="expected an Adjustment"):
        create_response("nope")


def test_plugin_name_from_argv0() -> None:
    assert parse_plugin_name("/opt/nri/plugins/10-gpucr") == ("10", "gpucr")
    assert parse_plugin_name("05-a-b") == ("05", "a-b")
    assert parse_plugin_name("gpucr") is None
    assert parse_plugin_name("1-x") is None


@pytest.mark.parametrize("mod", ["nri_plugin.ttrpc", "nri_plugin.mux", "nri_plugin.nri", "nri_plugin.nri.api"])
def test_all_exports_exist(mod: str) -> None:
    m = importlib.import_module(mod)
    assert m.__all__ and all(hasattr(m, n) for n in m.__all__)
    assert sorted(m.__all__) == list(m.__all__) or len(set(m.__all__)) == len(m.__all__)
