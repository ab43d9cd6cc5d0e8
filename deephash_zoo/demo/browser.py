"""Headless Chromium from the system (Debian's ``chromium`` package): screenshots and rendered DOM of a page.

The README's screenshot and the demo's browser test come from the same calls. Nothing is downloaded: when
no Chromium is on PATH, :func:`find_chromium` says so and the caller skips or stops with that message.
``--virtual-time-budget`` lets the page's scripts (Gradio's front end, its load event) finish before the
capture; network waits do not consume it, so the server's answer arrives first.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path
from typing import List, Optional, Tuple

__all__ = ['CHROMIUM_NAMES', 'find_chromium', 'dump_dom', 'screenshot']

CHROMIUM_NAMES = ('chromium', 'chromium-browser')
_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
          '--disable-extensions', '--no-first-run', '--hide-scrollbars', '--mute-audio')


def find_chromium() -> Optional[str]:
    """Path of a Chromium on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


def _run(args: List[str], timeout: float) -> subprocess.CompletedProcess:
    chromium = find_chromium()
    if chromium is None:
        raise FileNotFoundError("no Chromium on PATH (apt-get install chromium); it renders the demo page")
    with tempfile.TemporaryDirectory(prefix='deephash-chromium-') as profile:  # fresh profile: no state kept
        return subprocess.run([chromium, *_FLAGS, f'--user-data-dir={profile}', *args], capture_output=True,
                              timeout=timeout, check=False)


def screenshot(url: str, out: Path, size: Tuple[int, int] = (1280, 1000), budget_ms: int = 15000,
               timeout: float = 90.0) -> Path:
    """Render ``url`` at ``size`` (width, height) and write a PNG screenshot to ``out`` (atomically)."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(f'.{out.stem}.tmp-{uuid.uuid4().hex[:8]}.png')
    try:
        done = _run([f'--window-size={size[0]},{size[1]}', f'--virtual-time-budget={budget_ms}',
                     f'--screenshot={tmp}', url], timeout)
        if done.returncode != 0 or not tmp.is_file():
            tail = done.stderr.decode(errors='replace').strip().splitlines()[-1:] or ['no output']
            raise RuntimeError(f'chromium could not screenshot {url}: exit {done.returncode}: {tail[0]}')
        os.replace(tmp, out)
    finally:
        tmp.unlink(missing_ok=True)
    return out


def dump_dom(url: str, budget_ms: int = 15000, timeout: float = 90.0) -> str:
    """The page's DOM after its scripts ran, as HTML text."""
    done = _run([f'--virtual-time-budget={budget_ms}', '--dump-dom', url], timeout)
    if done.returncode != 0:
        raise RuntimeError(f'chromium could not render {url}: exit {done.returncode}')
    return done.stdout.decode(errors='replace')
