#!/usr/bin/python3 -SE
"""What gpucr's runc wrapper runs for a ``create`` that restores (nri_plugin/handlers/runc_restore.py)."""
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(__file__))))  # -S: nothing else is on sys.path
from nri_plugin.handlers.runc_restore import main  # noqa: E402

sys.exit(main(sys.argv))
