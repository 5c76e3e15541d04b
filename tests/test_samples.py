"""Every sample runs and prints what its comments promise."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

SAMPLES = Path(__file__).resolve().parent.parent / "samples"


def test_the_samples_run_and_print_what_their_comments_promise() -> None:
    result = subprocess.run(
        [sys.executable, str(SAMPLES / "crdt_basics.py")],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    assert "counter: 7" in result.stdout
    assert "tags: ['blue', 'green', 'red']" in result.stdout
    assert "title: final" in result.stdout
    assert "concurrent versions: ['v1', 'v2']" in result.stdout
    assert "groups: {'admins': ['ann', 'bo'], 'users': ['al']}" in result.stdout
