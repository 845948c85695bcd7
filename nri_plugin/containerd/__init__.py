"""containerd's own gRPC API (the subset gpucr needs): task state, pause/resume and checkpoint to a directory.

containerd 1.7's CRI has no CheckpointContainer, so ``gpucr checkpoint CONTAINER`` uses the task API there. Calling
it directly (not through the Go client's helper, which pauses first) reaches runc with the container running, and
the checkpoint still passes through runc and CRIU, where gpucr's CRIU front acts.
"""

from .tasks import TaskClient, TaskError, TaskInfo

__all__ = ["TaskClient", "TaskError", "TaskInfo"]
