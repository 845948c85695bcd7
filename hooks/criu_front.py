#!/usr/bin/python3 -SE
"""The program a runtime runs as ``criu``: gpucr's CRIU front (nri_plugin/front/main.py; packaging/criu-front.md)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # -S: nothing else is on sys.path
from nri_plugin.front.main import main  # noqa: E402

sys.exit(main(sys.argv))
