"""The joiners: one module per event source, joining the protocol, policy and engine layers.

* ``nri_policy`` -- NRI events from containerd -> the checkpoint policy -> an adjustment and a state record;
* ``front_cuda`` -- the CRIU front's hook points (a runtime's dump or restore) -> the CUDA steps;
* ``oci_records`` -- OCI hook stages (createRuntime, poststop) -> the state records;
* ``nri_logger`` -- NRI events -> log lines (a debugging plugin).

Imports nothing: the CRIU front loads ``front_cuda`` on every dump and must not pay for the others. Only the CLI,
``hooks/`` and the front's configuration (a ``module:callable`` string) reach this package.
"""

__all__ = ["front_cuda", "nri_logger", "nri_policy", "oci_records"]
