"""containerd's own gRPC API (the subset gpucr needs): task state, pause/resume and checkpoint to a directory; the
content store, image records and leases (``gpucr export``/``import`` of a checkpoint as an OCI image).

containerd 1.7's CRI has no CheckpointContainer, so ``gpucr checkpoint CONTAINER`` uses the task API there. Calling
it directly (not through the Go client's helper, which pauses first) reaches runc with the container running, and
the checkpoint still passes through runc and CRIU, where gpucr's CRIU front acts.
"""

from .content import ContentClient, ContentError, Descriptor, ImageExistsError, NotFoundError
from .tasks import TaskClient, TaskError, TaskInfo

__all__ = ["ContentClient", "ContentError", "Descriptor", "ImageExistsError", "NotFoundError", "TaskClient",
           "TaskError", "TaskInfo"]
