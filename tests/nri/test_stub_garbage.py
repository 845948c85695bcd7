"""Property test: whatever bytes a "runtime" sends, in whatever splits, the stub's connection ends with a specific
error (or a clean EOF) within its timeouts -- never an unexpected exception, never a hang."""

from __future__ import annotations

import asyncio
import struct

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from nri_plugin.mux import encode_frame
from nri_plugin.nri import RegistrationError, Stub
from nri_plugin.nri.api import PLUGIN_SERVICE
from nri_plugin.ttrpc._pb import ttrpc_pb2 as tpb
from nri_plugin.ttrpc import ConnectionClosedError, FrameError, encode_frame as ttrpc_frame
from tests.fakes.aio import run, socketpair
from tests.nri.test_stub import Recorder

# raw garbage, plus structured garbage that gets past the mux header check into ttrpc and the NRI decoder
chunk = st.one_of(
    st.binary(max_size=200),
    st.builds(lambda c, b: encode_frame(c, b), st.sampled_from([1, 2]), st.binary(max_size=200)),
    st.builds(lambda s, t, b: encode_frame(1, ttrpc_frame(s, t, b)), st.integers(0, 2**32 - 1),
              st.integers(0, 4), st.binary(max_size=200)),
    st.builds(lambda n: struct.pack(">II", 1, n), st.integers(0, 2**32 - 1)),
    # a valid RegisterPlugin reply, so later garbage reaches a registered stub
    st.just(encode_frame(2, ttrpc_frame(1, 2, b""))),
    # well-formed Plugin-service requests with random NRI payloads
    st.builds(lambda sid, m, b: encode_frame(1, ttrpc_frame(sid * 2 + 1, 1, tpb.Request(
        service=PLUGIN_SERVICE, method=m, payload=b).SerializeToString())),
        st.integers(0, 1000), st.sampled_from(["Configure", "Synchronize", "CreateContainer", "StateChange",
                                               "StartContainer", "Shutdown", "Bogus"]), st.binary(max_size=100)),
)


@settings(max_examples=80, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(chunk, max_size=6))
def test_random_runtime_bytes(chunks: list[bytes]) -> None:
    async def main() -> None:
        a, b = socketpair()
        stub = Stub(Recorder(), name="fuzz", idx="01", connection=a, registration_timeout_s=0.3)
        task = asyncio.get_running_loop().create_task(stub.run())
        loop = asyncio.get_running_loop()
        try:
            for c in chunks:
                await loop.sock_sendall(b, c)
                await asyncio.sleep(0)
        except (BrokenPipeError, ConnectionResetError):
            pass
        b.close()
        try:
            await asyncio.wait_for(task, 5)
        except (RegistrationError, ConnectionClosedError, FrameError):
            pass

    run(main(), 10)
