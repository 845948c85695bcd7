"""Leases on CUDA critical sections: a workload is never left locked or checkpointed, whatever dies mid-checkpoint.

Before the first lock (and before thawing a caller-frozen cgroup), ``gpucr checkpoint`` and the CRIU front write a
lease into ``<state_dir>/leases/<id>.json`` (the directory 0700 and root's, the file written whole, fsynced and
renamed into place): who holds it (pid and /proc start time, so a reused pid is not mistaken for the holder), the
processes it is about to lock (pid and start time each), their cgroup and its freezer state as found, the phase and
its deadline, and what a rollback must undo. The holder updates it at each phase and removes it when done.

Any gpucr process that finds a lease whose holder is gone, or whose phase ran past its deadline (plus a grace, after
which a still-living holder is killed first), rolls it back (:func:`sweep`): thaw the cgroup (a driver call into a
frozen process blocks), then restore (if CHECKPOINTED) and unlock (if LOCKED) every named process that is still the
same process, with :meth:`.cuda_steps.CudaSteps.rollback`, and put the cgroup back: as the holder found it when the
holder owned the freezer state (``gpucr checkpoint``), as it is now when a runtime owns it (the front: containerd
resumes the task it paused once the checkpoint fails). One log line names the container and what was undone. A lease
whose holder lives and is within its deadline is never touched. Claims are atomic renames, so two sweepers never
roll back the same lease.

Test-only: :func:`pause_point` stops the holder at a named point when a test asks (``GPUCR_TEST_PAUSE_AT``), so a
test can kill it at an exact phase; nothing else reads that variable.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import time
import uuid
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from ..errors import GpucrError
from ..host.proc import start_time
from ..host.thp import Held, ThpError, ThpStage
from .cuda.driver import CudaError, ProcessState
from .cuda_steps import CudaSteps, FreezerLike, Suspended

__all__ = [
    "DEFAULT_BUDGETS_S", "GRACE_S", "Lease", "LeaseError", "LeaseHolder", "LeaseStore", "LeasedProcess",
    "RollbackResult",
    "Interrupted", "TEST_PAUSE_ENV", "TEST_PAUSE_FILE_ENV", "pause_point", "roll_back", "sweep",
]

log = logging.getLogger(__name__)

LEASE_FORMAT = 1
#: each phase's default budget; the node config and the container's annotations override them (capped by the node)
DEFAULT_BUDGETS_S: dict[str, float] = {
    "thaw": 30.0, "cuda-lock": 60.0, "cuda-checkpoint": 600.0, "criu-dump": 600.0, "cuda-restore": 600.0,
    "cuda-unlock": 60.0,
}
#: how long past its deadline a living holder keeps its lease (it should have rolled back itself by then)
GRACE_S = 10.0
#: the phases a lease records, keyed by the :data:`.cuda_steps.OnPhase` points that start them
_PHASE_OF = {"thaw": "thaw", "cuda-lock": "cuda-lock", "cuda-checkpoint": "cuda-checkpoint", "refreeze": "criu-dump",
             "criu-dump": "criu-dump", "cuda-restore": "cuda-restore", "cuda-unlock": "cuda-unlock"}
#: what a rollback must undo once the section reached a phase
_UNDO = {"thaw": ["refreeze"], "cuda-lock": ["unlock"], "cuda-checkpoint": ["restore", "unlock"],
         "criu-dump": ["restore", "unlock"], "cuda-restore": ["restore", "unlock"], "cuda-unlock": ["unlock"]}

#: test-only: the pause point at which the holder stops (see :func:`pause_point`), and the file it writes its pid to
TEST_PAUSE_ENV = "GPUCR_TEST_PAUSE_AT"
TEST_PAUSE_FILE_ENV = "GPUCR_TEST_PAUSE_FILE"


class LeaseError(GpucrError):
    """The lease directory is unsafe or a lease cannot be written (the checkpoint is refused before any lock)."""


class Interrupted(GpucrError):
    """A signal (SIGTERM, SIGINT) or a phase deadline ended the critical section: the holder rolls back and exits."""

    def __init__(self, message: str, *, step: str = "") -> None:
        super().__init__(message)
        self.step = step


@dataclass(frozen=True)
class LeasedProcess:
    pid: int
    start: int


@dataclass
class Lease:
    """One critical section in progress, as written to ``<state_dir>/leases/<id>.json``."""

    id: str
    holder: str  #: "gpucr checkpoint", "criu front"
    holder_pid: int
    holder_start: int
    what: str  #: the workload, for log lines ("container abc (pid 42)")
    container_id: str = ""
    root_pid: int = 0
    processes: list[LeasedProcess] = field(default_factory=list)
    cgroup_path: str = ""
    cgroup_version: int = 0
    frozen_before: bool = False
    #: "holder": put the cgroup back as found (frozen_before); "runtime": the runtime that froze it resumes it
    cgroup_owner: str = "holder"
    phase: str = "thaw"
    deadline: float = 0.0  #: wall-clock seconds; the current phase's
    undo: list[str] = field(default_factory=list)
    created: float = 0.0
    problems: list[str] = field(default_factory=list)  #: what the last rollback attempt could not undo
    #: the THP boost held while the driver copies (:meth:`nri_plugin.host.thp.Held.to_json`: its holder token and
    #: the node's original mode), given back by a rollback
    thp: dict[str, str] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        return {"format": LEASE_FORMAT, **asdict(self)}

    @classmethod
    def from_json(cls, d: Mapping[str, Any]) -> Lease:
        if d.get("format") != LEASE_FORMAT:
            raise ValueError(f"unknown lease format {d.get('format')!r}")
        kw = {k: v for k, v in d.items() if k != "format"}
        kw["processes"] = [LeasedProcess(int(p["pid"]), int(p["start"])) for p in kw.get("processes") or []]
        return cls(**kw)

    def holder_alive(self) -> bool:
        return self.holder_pid > 0 and start_time(self.holder_pid) == self.holder_start

    def names(self, pid: int) -> bool:
        return pid == self.root_pid or any(p.pid == pid for p in self.processes)


class LeaseStore:
    """The lease directory ``<state_dir>/leases``: root's, 0700; files written atomically and fsynced."""

    def __init__(self, state_dir: Path | str) -> None:
        self.dir = Path(state_dir) / "leases"

    def _ensure(self) -> Path:
        try:
            self.dir.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
            self.dir.mkdir(mode=0o700, exist_ok=True)
            st, top = os.lstat(self.dir), os.stat(self.dir.parent)
        except OSError as exc:
            raise LeaseError(f"cannot create the lease directory {self.dir}: {exc.strerror}; check the node config's "
                             "state_dir (run as root)") from exc
        if top.st_uid != os.geteuid() or top.st_mode & 0o022:
            raise LeaseError(f"refusing the state dir {self.dir.parent}: others may write to it (mode "
                             f"{oct(top.st_mode & 0o7777)}, uid {top.st_uid}); make it uid {os.geteuid()}'s, not "
                             "group- or world-writable")
        self._check(st)
        return self.dir

    def _check(self, st: os.stat_result) -> None:
        import stat

        if not stat.S_ISDIR(st.st_mode) or st.st_uid != os.geteuid() or st.st_mode & 0o077:
            raise LeaseError(f"refusing the lease directory {self.dir}: it must be a directory of uid {os.geteuid()} "
                             f"with mode 0700 (it is {oct(st.st_mode & 0o7777)}, uid {st.st_uid}); fix or remove it")

    def path(self, lease_id: str) -> Path:
        return self.dir / f"{lease_id}.json"

    def write(self, lease: Lease) -> None:
        """Write ``lease`` whole: a temporary file, fsync, rename, fsync of the directory."""
        d = self._ensure()
        tmp = d / f".{lease.id}.{os.getpid()}.tmp"
        data = json.dumps(lease.to_json(), sort_keys=True).encode()
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
            try:
                os.write(fd, data)
                os.fsync(fd)
            finally:
                os.close(fd)
            os.replace(tmp, self.path(lease.id))
            dfd = os.open(d, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)
        except OSError as exc:
            tmp.unlink(missing_ok=True)
            raise LeaseError(f"cannot write the lease of {lease.what} into {d}: {exc.strerror}; free space there "
                             "(the node config's state_dir) and retry") from exc

    def remove(self, lease_id: str) -> None:
        self.path(lease_id).unlink(missing_ok=True)

    def entries(self) -> list[Path]:
        """Lease files, claimed ones (``<id>.json.claim-<pid>``) included; [] when there is no directory."""
        try:
            st = os.lstat(self.dir)
        except FileNotFoundError:
            return []
        except OSError as exc:
            raise LeaseError(f"cannot read the lease directory {self.dir}: {exc.strerror}") from exc
        self._check(st)
        return sorted(p for p in self.dir.iterdir() if p.name.endswith(".json") or ".json.claim-" in p.name)

    @staticmethod
    def read(path: Path) -> Lease:
        with open(path, encoding="utf-8") as f:
            return Lease.from_json(json.load(f))

    def claim(self, path: Path) -> Path | None:
        """Take ``path`` for a rollback by renaming it to ``<id>.json.claim-<our pid>``; None when another sweeper
        holds it (a live claimer) or it vanished."""
        if ".json.claim-" in path.name:
            base, _, who = path.name.partition(".json.claim-")
            owner = int(who) if who.isdigit() else 0
            if owner != os.getpid() and owner > 0 and start_time(owner):
                return None  # another sweeper is at it
        else:
            base = path.name[: -len(".json")]
        dst = self.dir / f"{base}.json.claim-{os.getpid()}"
        try:
            os.rename(path, dst)
        except FileNotFoundError:
            return None
        return dst


# -- the holder's side --------------------------------------------------------------------------------------------

def pause_point(point: str, pause_at: str | None = None, pid_file: str | None = None) -> None:
    """Test-only: stop here when the test asked for ``point`` (``$GPUCR_TEST_PAUSE_AT``, or the front's
    ``test_pause_at``), after writing our pid to ``pid_file`` (``$GPUCR_TEST_PAUSE_FILE``), until a signal ends or
    interrupts us. A product run never sets either, and this returns at once."""
    at = pause_at if pause_at is not None else os.environ.get(TEST_PAUSE_ENV)
    if not at or at != point:
        return
    target = pid_file if pid_file is not None else os.environ.get(TEST_PAUSE_FILE_ENV)
    log.warning("test pause point %s reached: pid %d waits for a signal", point, os.getpid())
    if target:
        tmp = f"{target}.tmp"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(f"{os.getpid()}\n")
        os.replace(tmp, target)
    while True:
        time.sleep(3600)


class LeaseHolder:
    """The lease of one critical section, kept by its holder: pass :meth:`on_phase` as the CUDA steps'
    ``on_phase``; call :meth:`end` when done (or when a rollback left nothing to undo)."""

    def __init__(self, store: LeaseStore, *, holder: str, container_id: str = "", what: str = "",
                 budgets: Mapping[str, float] | None = None, cgroup_owner: str = "holder",
                 pause_at: str | None = None, pause_file: str | None = None) -> None:
        self.store = store
        self.budgets = {**DEFAULT_BUDGETS_S, **(budgets or {})}
        self.pause_at, self.pause_file = pause_at, pause_file
        self.lease = Lease(id=uuid.uuid4().hex[:16], holder=holder, holder_pid=os.getpid(),
                           holder_start=start_time(os.getpid()), what=what, container_id=container_id,
                           cgroup_owner=cgroup_owner, created=time.time())
        self.written = False

    @property
    def phase(self) -> str:
        return self.lease.phase

    def on_phase(self, point: str, s: Suspended | None) -> None:
        """Record the phase ``point`` starts (before its first step), then the test pause point, if any."""
        if point == "done":
            self.end()
            return
        phase = _PHASE_OF.get(point)
        # the first write comes before the first thaw or lock (a restore's: before the CUDA restore of what CRIU
        # brought back); a section with no CUDA process and nothing thawed holds no lease
        if phase is not None and s is not None and (self.written or point == "thaw" or s.procs):
            self._record(phase, s)
        pause_point(point, self.pause_at, self.pause_file)

    def _record(self, phase: str, s: Suspended) -> None:
        le = self.lease
        if not self.written:
            le.root_pid = s.pid
            if s.cgroup is not None:
                le.cgroup_path, le.cgroup_version = str(s.cgroup.path), int(getattr(s.cgroup, "version", 0))
            le.frozen_before = s.frozen_before
            le.what = le.what or f"pid {s.pid}"
        if s.procs:
            le.processes = [LeasedProcess(p.pid, start_time(p.pid)) for p in s.procs]
        le.thp = s.thp.to_json() if s.thp is not None else {}
        le.phase = phase
        le.deadline = time.time() + self.budgets.get(phase, DEFAULT_BUDGETS_S["criu-dump"])
        le.undo = list(_UNDO.get(phase, [])) + (["refreeze"] if s.frozen_before and phase != "thaw" else [])
        self.store.write(le)
        self.written = True

    def end(self) -> None:
        if self.written:
            self.store.remove(self.lease.id)
            self.written = False


# -- the sweeper's side -------------------------------------------------------------------------------------------

@dataclass
class RollbackResult:
    lease: Lease
    reason: str
    undone: list[str] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)

    def line(self) -> str:
        le = self.lease
        did = "; ".join(self.undone) or "nothing left to undo"
        text = (f"rolled back the lease of {le.what} ({le.holder} pid {le.holder_pid}, phase {le.phase}): "
                f"{self.reason}; {did}")
        if self.problems:
            text += "; NOT undone: " + "; ".join(self.problems)
        return text


def _stale(le: Lease, now: float, grace_s: float) -> tuple[str, bool] | None:
    """(why, kill the holder first) when ``le`` must be rolled back; None while its holder lives in time."""
    if not le.holder_alive():
        return f"its holder is gone (pid {le.holder_pid})", False
    if le.deadline and now > le.deadline + grace_s:
        return f"its {le.phase} phase ran {now - le.deadline:.0f}s past its deadline", True
    return None


def roll_back(le: Lease, steps: CudaSteps, freezer_at: Callable[[str, int], FreezerLike | None],
              reason: str) -> RollbackResult:
    """Undo what ``le`` says is held: thaw, restore and unlock each named process that is still itself, and put
    the cgroup back (see the module's docstring). Never raises for CUDA trouble: it lands in ``problems``."""
    res = RollbackResult(le, reason)
    cg = freezer_at(le.cgroup_path, le.cgroup_version) if le.cgroup_path else None
    found_frozen = False
    try:
        found_frozen = cg is not None and cg.frozen()
        if cg is not None and found_frozen:
            cg.thaw()  # a driver call into a frozen process blocks
    except GpucrError as exc:
        res.problems.append(f"cgroup {le.cgroup_path}: {exc}")
    live = [p.pid for p in le.processes if p.start and start_time(p.pid) == p.start]
    states: dict[int, ProcessState] = {}
    for pid in live:
        try:
            states[pid] = steps.driver.get_state(pid)
        except CudaError as exc:
            res.problems.append(f"pid {pid}: {exc}")
    held = {pid for pid, st in states.items() if st in (ProcessState.LOCKED, ProcessState.CHECKPOINTED)}
    want_frozen = le.frozen_before if le.cgroup_owner == "holder" else found_frozen
    res.problems += steps.rollback(Suspended(pid=le.root_pid, cgroup=cg, frozen_before=want_frozen, touched=held))
    for pid in sorted(held):
        what = "restored and unlocked" if states[pid] == ProcessState.CHECKPOINTED else "unlocked"
        res.undone.append(f"pid {pid} {what}")
    gone = len(le.processes) - len(live)
    if gone:
        res.undone.append(f"{gone} process(es) gone")
    if le.thp:
        try:
            held = Held.from_json(le.thp)
            back = ThpStage(held.state_dir, Path(held.knob)).release(held)
            res.undone.append(f"transparent hugepages {back} again (the node's mode)" if back else
                              "THP boost given back (other checkpoints still hold it)")
        except (ThpError, KeyError, TypeError) as exc:
            res.problems.append(f"THP: {exc}")
    if cg is not None:
        try:
            state = "frozen" if cg.frozen() else "thawed"
        except GpucrError as exc:
            state = f"in an unknown state ({exc})"
        res.undone.append(f"cgroup {le.cgroup_path} {state} "
                          + ("(as its holder found it)" if le.cgroup_owner == "holder" else "(as its runtime has it)"))
    return res


def sweep(store: LeaseStore, steps_of: Callable[[], CudaSteps], freezer_at: Callable[[str, int], FreezerLike | None],
          *, select: Callable[[Lease], bool] | None = None, grace_s: float = GRACE_S,
          report: Callable[[Lease, str], None] | None = None, thp: ThpStage | None = None) -> list[RollbackResult]:
    """Roll back every stale lease ``select`` accepts (all by default); ``report(lease, state)`` hears about each
    lease left alone ("held by ..."). The driver is opened (``steps_of``) only when a lease needs it. Then the THP
    boost's holders (``thp``, default the state dir's) are reconciled: a holder killed before its lease named the
    boost is dropped, and the node's mode comes back once nobody holds it."""
    results = _sweep_leases(store, steps_of, freezer_at, select, grace_s, report)
    try:
        back = (thp or ThpStage(store.dir.parent)).reconcile()
        if back:
            log.warning("transparent hugepages back to the node's mode %s (a checkpoint holding the boost died)", back)
    except ThpError as exc:
        log.error("%s", exc)
    return results


def _sweep_leases(store: LeaseStore, steps_of: Callable[[], CudaSteps],
                  freezer_at: Callable[[str, int], FreezerLike | None], select: Callable[[Lease], bool] | None,
                  grace_s: float, report: Callable[[Lease, str], None] | None) -> list[RollbackResult]:
    results: list[RollbackResult] = []
    for path in store.entries():
        try:
            le = store.read(path)
        except (OSError, ValueError, TypeError, KeyError) as exc:
            log.error("unreadable lease %s (%s): removing it; check the CUDA state of the workloads on this node",
                      path, exc)
            path.unlink(missing_ok=True)
            continue
        if select is not None and not select(le):
            continue
        claimed_by_other = ".json.claim-" in path.name and not path.name.endswith(f".claim-{os.getpid()}")
        why = _stale(le, time.time(), grace_s)
        if why is None and not claimed_by_other:
            if report is not None:
                left = le.deadline - time.time()
                report(le, f"held by {le.holder} pid {le.holder_pid}, phase {le.phase}, {left:.0f}s to its deadline")
            continue
        mine = store.claim(path)
        if mine is None:
            if report is not None:
                report(le, "being rolled back by another gpucr process")
            continue
        reason, kill = why or ("its rollback was left unfinished", False)
        if kill and le.holder_alive():
            try:
                os.kill(le.holder_pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
            reason += f"; killed its holder, pid {le.holder_pid}"
        res = roll_back(le, steps_of(), freezer_at, reason)
        results.append(res)
        if res.problems:
            # kept for the next sweep (the holder is gone, so it stays stale); said again only when it changes
            log.log(logging.ERROR if le.problems != res.problems else logging.DEBUG, "%s", res.line())
            le.problems = res.problems
            try:
                store.write(le)
            finally:
                mine.unlink(missing_ok=True)
        else:
            log.warning("%s", res.line())
            mine.unlink(missing_ok=True)
    return results

