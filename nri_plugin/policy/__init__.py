"""Checkpoint policy: which containers gpucr manages and how, decided at creation from annotations and node config.

Pure decisions (``decide``), the node configuration, annotation validation, CRIU config merging and the state-dir
records the CRIU front reads. No protocol here: the NRI plugin adapts these to spec adjustments.
"""

from .annotations import ANNOTATIONS, PREFIX, AnnotationError, ContainerPolicy, parse_annotations
from .config import DEFAULT_CONFIG_PATH, ConfigError, NodeConfig, load_config
from .criu_conf import CriuOption, merge_config, parse_config, render_config
from .decide import ContainerView, Decision, MountView, Periodic, decide
from .gpu import GpuRequest, detect_gpus
from .records import (
    ContainerRecord, RecordedGpus, RecordedPolicy, RecordError, RecordMissingError, load_record, remove_record,
    write_record,
)

__all__ = [
    "ANNOTATIONS", "DEFAULT_CONFIG_PATH", "PREFIX", "AnnotationError", "ConfigError", "ContainerPolicy",
    "ContainerRecord", "ContainerView", "CriuOption", "Decision", "GpuRequest", "MountView", "NodeConfig", "Periodic",
    "RecordError", "RecordMissingError", "RecordedGpus", "RecordedPolicy", "decide", "detect_gpus", "load_config", "load_record", "merge_config", "parse_annotations",
    "parse_config", "remove_record", "render_config", "write_record",
]
