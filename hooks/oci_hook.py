"""``gpucr-hook STAGE``: the OCI hook gpucr injects into managed containers (createRuntime, poststop).

Thin entry point: reads the OCI state from stdin and calls :mod:`nri_plugin.handlers.oci_records`. Bookkeeping must
never break a container, so failures are logged to stderr (the runtime's log) and the hook exits 0, unless
``--strict`` is given.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path

from nri_plugin.handlers import oci_records
from nri_plugin.policy.config import ConfigError, load_config
from nri_plugin.errors import GpucrError

STAGES = {"create-runtime": oci_records.on_create_runtime, "poststop": oci_records.on_poststop}


def main(argv: Sequence[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="gpucr-hook", description=__doc__.split("\n", 1)[0])
    ap.add_argument("stage", choices=sorted(STAGES))
    ap.add_argument("--state-dir", type=Path, help="gpucr state dir (default: from the node config)")
    ap.add_argument("--config", type=Path, help="node config (default /etc/gpucr/config.toml)")
    ap.add_argument("--strict", action="store_true", help="exit 1 on failure (fails the container)")
    args = ap.parse_args(argv)
    try:
        state_dir = args.state_dir or load_config(args.config).state_dir
        state = oci_records.parse_state(sys.stdin.buffer.read())
        print(f"gpucr-hook {args.stage}: {STAGES[args.stage](state, state_dir)}", file=sys.stderr)
        return 0
    except (GpucrError, ConfigError, ValueError, OSError) as exc:
        print(f"gpucr-hook {args.stage}: error: {exc}", file=sys.stderr)
        return 1 if args.strict else 0


if __name__ == "__main__":
    sys.exit(main())
