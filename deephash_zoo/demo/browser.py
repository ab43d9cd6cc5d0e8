"""Headless Chromium from the system (Debian's ``chromium`` package): screenshots and rendered DOM of a page.

The README's screenshot and the demo's browser test come from the same calls. Nothing is downloaded: when
no Chromium is on PATH, :func:`find_chromium` says so and the caller skips or stops with that message.

Chromium is driven through the DevTools protocol over a pipe (``--remote-debugging-pipe``: JSON messages,
each ended by a NUL byte, on the child's file descriptors 3 and 4), so no websocket library is needed. That
lets a capture wait for what the page must show, e.g. the answer of Gradio's load event, a server round
trip that a fixed ``--virtual-time-budget`` does not always wait for on a loaded machine, instead of
guessing a delay.
"""
from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import shutil
import subprocess
import tempfile
import time
from pathlib import Path
from typing import Any, Dict, Optional, Tuple

from deephash_zoo.utils import write_atomic

__all__ = ['CHROMIUM_NAMES', 'PAGE_SETTLED', 'find_chromium', 'HeadlessPage', 'dump_dom', 'screenshot']

CHROMIUM_NAMES = ('chromium', 'chromium-browser')
_FLAGS = ('--headless', '--no-sandbox', '--disable-gpu', '--disable-dev-shm-usage', '--disable-background-networking',
          '--disable-extensions', '--no-first-run', '--hide-scrollbars', '--mute-audio', '--remote-debugging-pipe')

# a page is settled when it (not the blank start page) has loaded and every <img> in it has finished decoding
PAGE_SETTLED = ("location.href !== 'about:blank' && document.readyState === 'complete'"
                " && Array.from(document.images).every(i => i.complete)")


def find_chromium() -> Optional[str]:
    """Path of a Chromium on PATH, or None."""
    for name in CHROMIUM_NAMES:
        path = shutil.which(name)
        if path:
            return path
    return None


class HeadlessPage:
    """One headless Chromium showing one page; a context manager that always stops the browser.

    ``wait_for(js)`` polls a JavaScript expression until it is true, ``html()`` and ``png()`` capture the page.
    """

    def __init__(self, url: str, size: Tuple[int, int] = (1280, 1000), timeout: float = 90.0):
        self.url, self.size, self.timeout = url, size, timeout
        self._next_id = 0
        self._buffer = b''
        self._proc: Optional[subprocess.Popen] = None
        self._profile: Optional[tempfile.TemporaryDirectory] = None
        self._session = ''
        self._write_fd = self._read_fd = -1  # our ends of the two pipes, once open

    # ------------------------------------------------------------------------------------------ lifecycle
    def __enter__(self) -> HeadlessPage:
        chromium = find_chromium()
        if chromium is None:
            raise FileNotFoundError("no Chromium on PATH (apt-get install chromium); it renders the demo page")
        self._deadline = time.monotonic() + self.timeout  # one deadline for start, page load, waits and capture
        self._profile = tempfile.TemporaryDirectory(prefix='deephash-chromium-')  # fresh profile: no state kept
        to_child, self._write_fd = os.pipe()  # the child reads commands on its fd 3
        self._read_fd, from_child = os.pipe()  # and writes answers and events on its fd 4

        def wire_pipes() -> None:  # runs in the child between fork and exec
            high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 16) for fd in (to_child, from_child)]  # so 3 and 4 cannot clash
            os.dup2(high[0], 3)
            os.dup2(high[1], 4)

        try:
            try:
                self._proc = subprocess.Popen(
                    [chromium, *_FLAGS, f'--user-data-dir={self._profile.name}',
                     f'--window-size={self.size[0]},{self.size[1]}', 'about:blank'],
                    stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
                    pass_fds=(3, 4), preexec_fn=wire_pipes)
            finally:  # the child holds its own copies of these ends
                os.close(to_child)
                os.close(from_child)
            target = self._call('Target.createTarget', {'url': 'about:blank'})['targetId']
            self._session = self._call('Target.attachToTarget', {'targetId': target, 'flatten': True})['sessionId']
            self._call('Emulation.setDeviceMetricsOverride',
                       {'width': self.size[0], 'height': self.size[1], 'deviceScaleFactor': 1, 'mobile': False})
            self._call('Page.navigate', {'url': self.url})
        except BaseException:
            self.__exit__(None, None, None)  # no browser, pipe or profile left behind
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        if self._proc is not None:
            try:
                if self._proc.poll() is None:
                    self._send('Browser.close', {}, session='')
                    self._proc.wait(timeout=10)
            except (OSError, subprocess.TimeoutExpired):
                pass
            if self._proc.poll() is None:
                self._proc.kill()
                self._proc.wait()
            self._proc = None
        for fd in (self._write_fd, self._read_fd):
            if fd >= 0:
                os.close(fd)
        self._write_fd = self._read_fd = -1
        if self._profile is not None:
            self._profile.cleanup()
            self._profile = None

    # ------------------------------------------------------------------------------------------ protocol
    def _send(self, method: str, params: Dict[str, Any], session: Optional[str] = None) -> int:
        self._next_id += 1
        message: Dict[str, Any] = {'id': self._next_id, 'method': method, 'params': params}
        session = self._session if session is None else session
        if session:
            message['sessionId'] = session
        os.write(self._write_fd, json.dumps(message).encode() + b'\0')
        return self._next_id

    def _read_message(self) -> Dict[str, Any]:
        while b'\0' not in self._buffer:
            left = self._deadline - time.monotonic()
            if left <= 0:
                raise TimeoutError(f'chromium did not finish with {self.url} within {self.timeout:.0f} s')
            ready, _, _ = select.select([self._read_fd], [], [], left)
            if not ready:
                continue
            chunk = os.read(self._read_fd, 1 << 20)
            if not chunk:
                code = self._proc.poll() if self._proc is not None else None
                raise RuntimeError(f'chromium exited (code {code}) while rendering {self.url}')
            self._buffer += chunk
        raw, self._buffer = self._buffer.split(b'\0', 1)
        return json.loads(raw)

    def _call(self, method: str, params: Optional[Dict[str, Any]] = None, session: Optional[str] = None) -> Dict:
        """Send one command and return its result; events that arrive meanwhile are not needed and dropped."""
        wanted = self._send(method, params or {}, session)
        while True:
            message = self._read_message()
            if message.get('id') != wanted:
                continue
            if 'error' in message:
                raise RuntimeError(f'chromium refused {method} on {self.url}: {message["error"].get("message")}')
            return message.get('result', {})

    def _evaluate(self, expression: str) -> Any:
        result = self._call('Runtime.evaluate', {'expression': expression, 'returnByValue': True})
        if 'exceptionDetails' in result:
            text = result['exceptionDetails'].get('exception', {}).get('description') or result['exceptionDetails']
            raise RuntimeError(f'the page could not evaluate {expression!r}: {text}')
        return result.get('result', {}).get('value')

    # ------------------------------------------------------------------------------------------ page
    def wait_for(self, expression: str, what: str = '', poll: float = 0.2) -> None:
        """Poll the JavaScript ``expression`` until it is truthy; TimeoutError naming ``what`` at the deadline.

        An expression that throws (the document is still being replaced, ``document.body`` not there yet)
        counts as not yet true; the last such error is named if the deadline passes.
        """
        last_error = ''
        while True:
            try:
                if self._evaluate(f'Boolean({expression})'):
                    return
            except RuntimeError as e:
                last_error = f' (last error: {e})'
            except TimeoutError:  # the deadline passed while chromium was answering (a loaded machine)
                last_error = ' (chromium was still answering)'
                self._deadline = time.monotonic()
            if time.monotonic() + poll >= self._deadline:
                raise TimeoutError(f'{self.url} did not show {what or expression} within {self.timeout:.0f} s'
                                   f'{last_error}; the page read: {self._visible_text()!r}')
            time.sleep(poll)

    def _visible_text(self, limit: int = 400) -> str:
        """The start of the page's text, for error messages (empty when even that cannot be read)."""
        self._deadline += 5  # a last look past the deadline, bounded
        try:
            return self._evaluate(f"document.body ? document.body.innerText.slice(0, {limit}) : ''") or ''
        except (RuntimeError, TimeoutError):
            return ''

    def settle(self, until: Optional[str] = None) -> None:
        """Wait until the page has settled (:data:`PAGE_SETTLED`) and the JavaScript condition ``until`` holds."""
        self.wait_for(PAGE_SETTLED if until is None else f'{PAGE_SETTLED} && ({until})', until or 'a loaded page')

    def html(self) -> str:
        """The page's DOM as HTML text."""
        return self._evaluate('document.documentElement.outerHTML')

    def png(self) -> bytes:
        """A PNG of the viewport."""
        return base64.b64decode(self._call('Page.captureScreenshot', {'format': 'png'})['data'])


def dump_dom(url: str, until: Optional[str] = None, timeout: float = 90.0) -> str:
    """The page's DOM once it has settled and the JavaScript condition ``until`` (if any) holds."""
    with HeadlessPage(url, timeout=timeout) as page:
        page.settle(until)
        return page.html()


def screenshot(url: str, out: Path, size: Tuple[int, int] = (1280, 1000), until: Optional[str] = None,
               timeout: float = 90.0) -> Path:
    """Render ``url`` at ``size`` (width, height) once settled (and ``until`` holds); write a PNG atomically."""
    out = Path(out).resolve()
    out.parent.mkdir(parents=True, exist_ok=True)
    with HeadlessPage(url, size=size, timeout=timeout) as page:
        page.settle(until)
        data = page.png()
    write_atomic(out, data)
    return out
