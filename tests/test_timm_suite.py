"""timm's own model test suite (from the pinned timm's sdist) passes on every registered name."""
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_timm_model_suite_passes_on_every_registered_model():
    env = dict(os.environ, PYTHON=sys.executable)
    proc = subprocess.run(['bash', str(ROOT / '.ci' / 'timm_suite.sh'), '-p', 'no:warnings'], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=1200)
    tail = (proc.stdout + proc.stderr)[-4000:]
    summary = re.search(r'(\d+) passed', proc.stdout)
    assert proc.returncode == 0, tail
    assert summary and int(summary.group(1)) >= 150, tail  # 26 models x the suite's tests
    assert ' failed' not in proc.stdout.splitlines()[-1], tail
