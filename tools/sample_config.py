"""Print the node config sample that the packages install as /etc/gpucr/config.toml: every key of
``nri_plugin.policy.config.NodeConfig`` commented out at its default, under the field's own ``#:`` doc comment.

Run by packaging/build.sh; tests/policy/test_sample_config.py checks the output against the dataclass.
"""

from __future__ import annotations

import inspect
import json
import re
import sys
from dataclasses import MISSING, fields
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from nri_plugin.policy import config  # noqa: E402


def _toml(value: object) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, (int, float)):
        return repr(value).replace("_", "")
    return json.dumps(str(value))


def sample() -> str:
    src = inspect.getsource(config.NodeConfig).splitlines()
    out = ["# gpucr node configuration (package gpucr; gpucr reads it at start: restart gpucr-plugin after edits).",
           "# Every key is optional and shown commented out at its default; uncomment a line to change it.",
           "# Bad keys or values stop the plugin with a message naming the key (nri_plugin/policy/config.py)."]
    for f in fields(config.NodeConfig):
        if f.name == "extra" or f.default is MISSING:
            continue
        at = next(i for i, ln in enumerate(src) if re.match(rf"\s+{f.name}:", ln))
        doc = []
        i = at - 1
        while i >= 0 and src[i].strip().startswith("#:"):
            doc.insert(0, src[i].strip()[2:].strip())
            i -= 1
        out.append("")
        out += [f"# {d}" for d in doc]
        out.append(f"# {f.name} = {_toml(f.default)}")
    return "\n".join(out) + "\n"


if __name__ == "__main__":
    sys.stdout.write(sample())
