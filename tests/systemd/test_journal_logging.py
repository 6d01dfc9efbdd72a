"""Under journald (JOURNAL_STREAM matches stderr) log lines carry a priority prefix and no timestamp."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

from tests.conftest import ROOT

SCRIPT = (
    "import logging\n"
    "from daemon import logging as dlog\n"
    "dlog.setup('debug')\n"
    "log = logging.getLogger('enigma.hub')\n"
    "log.info('started', extra={'kv': {'port': 7700}})\n"
    "log.warning('slow client')\n"
    "try:\n    1 / 0\nexcept ZeroDivisionError:\n    log.exception('handler failed')\n"
)


def _run(tmp_path: Path, journal: bool) -> list[str]:
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        env = {k: v for k, v in os.environ.items() if k != "JOURNAL_STREAM"}
        if journal:
            st = os.fstat(f.fileno())
            env["JOURNAL_STREAM"] = f"{st.st_dev}:{st.st_ino}"
        subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, stderr=f, check=True, timeout=60)
    return err.read_text().splitlines()


def test_journal_lines_have_priorities_and_no_timestamps(tmp_path: Path) -> None:
    lines = _run(tmp_path, journal=True)
    assert lines[0] == "<6>hub: started port=7700"
    assert lines[1] == "<4>hub: slow client"
    assert lines[2] == "<3>hub: handler failed"
    # The traceback's lines keep the error priority instead of arriving as separate info records.
    assert all(line.startswith("<3>") for line in lines[3:])
    assert any("ZeroDivisionError" in line for line in lines[3:])


def test_terminal_lines_have_timestamps_and_levels(tmp_path: Path) -> None:
    lines = _run(tmp_path, journal=False)
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z info    hub: started port=7700$", lines[0])


def test_a_stale_journal_stream_for_another_file_is_ignored(tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.write_text("")
    st = other.stat()
    err = tmp_path / "stderr.txt"
    with open(err, "w") as f:
        env = {**os.environ, "JOURNAL_STREAM": f"{st.st_dev}:{st.st_ino}"}
        subprocess.run([sys.executable, "-c", SCRIPT], cwd=ROOT, env=env, stderr=f, check=True, timeout=60)
    assert not err.read_text().startswith("<")
