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
    total = re.search(r'timm suite: (\d+) passed, \d+ skipped in (\d+) groups, (\d+) group\(s\) failed', proc.stdout)
    assert proc.returncode == 0, tail
    assert total and int(total.group(1)) >= 200 and total.group(3) == '0', tail  # 30 models x the suite's tests
    groups = re.findall(r'^group \d+/\d+ .*: (\d+) passed', proc.stdout, flags=re.M)
    assert len(groups) == int(total.group(2)) and sum(map(int, groups)) == int(total.group(1)), tail
