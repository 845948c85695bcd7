"""A criu that dies mid-request: it starts the real criu as ``criu swrk`` on a socket of its own, relays every
message between it and the caller, and at the notification named STAGE SIGKILLs the real criu and exits 1 (the
caller sees its socket close without a final answer, as when criu crashes or the OOM killer picks it).

Usage (as the caller's criu binary, through a wrapper script): ``criu_killer.py REAL_CRIU STAGE swrk FD``. At
``post-dump`` the caller's answer is read first and never delivered: the caller has done its post-dump work, and
CRIU dies before it can kill or resume the tasks. Anything but ``swrk`` is handed to the real criu. CRIU opens the
request's directory fds in its peer's /proc, so they are reopened here under the same numbers first.
"""

from __future__ import annotations

import os
import select
import signal
import socket
import struct
import subprocess
import sys

from nri_plugin.ckpt.criu._pb import rpc_pb2 as pb

real, stage, args = sys.argv[1], sys.argv[2], sys.argv[3:]
if not args or args[0] != "swrk":
    os.execv(real, [real, *args])
up = socket.socket(fileno=int(args[1]))
caller = struct.unpack("3i", up.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i")))[0]
a, b = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
ours = socket.socket(fileno=os.dup2(a.fileno(), 200, inheritable=False))  # out of the way of the caller's numbers
theirs = os.dup2(b.fileno(), 201, inheritable=True)
a.detach()
b.close()
criu = subprocess.Popen([real, "swrk", str(theirs)], close_fds=False)
os.close(theirs)


def die() -> None:
    criu.send_signal(signal.SIGKILL)
    criu.wait()
    sys.stderr.write(f"criu_killer: killed criu (pid {criu.pid}) at {stage}\n")
    sys.exit(1)


first = True
while True:
    ready, _, _ = select.select([up, ours], [], [])
    if up in ready:
        data = up.recv(1 << 20)
        if not data:  # the caller is done (or gone): criu sees the same
            ours.close()
            sys.exit(criu.wait())
        if first:
            req = pb.criu_req()
            req.ParseFromString(data)
            for field in ("images_dir_fd", "work_dir_fd"):
                if req.HasField("opts") and req.opts.HasField(field):
                    n = getattr(req.opts, field)
                    fd = os.open(f"/proc/{caller}/fd/{n}", os.O_RDONLY | os.O_DIRECTORY)
                    if fd != n:
                        os.dup2(fd, n, inheritable=False)
                        os.close(fd)
            first = False
        ours.send(data)
    if ours in ready:
        data = ours.recv(1 << 20)
        if not data:
            sys.exit(criu.wait())
        resp = pb.criu_resp()
        resp.ParseFromString(data)
        if resp.type == pb.NOTIFY and resp.notify.script == stage:
            if stage == "post-dump":
                up.send(data)
                up.recv(1 << 20)  # the caller's answer: never delivered
            die()
        up.send(data)
