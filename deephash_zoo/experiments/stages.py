"""A log of long, resumable stages (pretraining, training, evaluation) and what each one cost.

The zoo build and the experiments' pretraining run stages that take up to an hour on 2 cores and are often
stopped (a session ends, a machine is reclaimed) and continued later. :class:`StageLog` records each stage in a
JSON-lines file when it finishes, with the CPU time (``time.process_time``: every thread of this process) and
wall time it took. Because a stopped process cannot write its record, a running stage also keeps its time so
far in ``TIMERS/NAME.json``, rewritten every ``tick`` seconds; the piece that continues it adds that time, so
the record reports every piece (the work an interruption lost included, less at most one tick) and how many
pieces there were, not only the last one.

Each tick also samples the machine's 1-minute load average: a stage that ran beside other work (tests, a
second training) took longer than it would alone, and its record says so (``load_mean`` against ``cores``).
:meth:`StageLog.note` adds a free-text note to a finished stage's record.
"""
import json
import os
import shutil
import threading
import time
from pathlib import Path
from typing import Any, Callable, Dict, Optional

import torch

from deephash_zoo.utils import cpu_model, read_jsonl, usable_cores, write_atomic

__all__ = ['StageLog', 'TIMER_TICK_SECONDS']

TIMER_TICK_SECONDS = 30.0


class _Timer:
    """CPU and wall seconds of one piece of a stage, added to what earlier pieces spent, saved every tick."""

    def __init__(self, path: Path, tick: float) -> None:
        self.path, self.tick = path, tick
        earlier = _read_timer(path)
        self.cpu_before, self.wall_before = earlier['cpu_seconds'], earlier['wall_seconds']
        self.pieces = earlier['pieces'] + 1
        self.load_sum, self.load_ticks = earlier['load_sum'], earlier['load_ticks']
        self._cpu0, self._wall0 = time.process_time(), time.perf_counter()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._loop, name=f'stage-timer:{path.stem}', daemon=True)

    def totals(self) -> Dict[str, Any]:
        return dict(cpu_seconds=self.cpu_before + time.process_time() - self._cpu0,
                    wall_seconds=self.wall_before + time.perf_counter() - self._wall0, pieces=self.pieces,
                    load_sum=self.load_sum, load_ticks=self.load_ticks)

    def sample_load(self) -> None:
        try:
            self.load_sum += os.getloadavg()[0]
            self.load_ticks += 1
        except OSError:  # no load average on this system
            pass

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path, json.dumps(self.totals()).encode())

    def _loop(self) -> None:
        while not self._stop.wait(self.tick):
            self.sample_load()
            self.save()

    def __enter__(self) -> '_Timer':
        self.save()  # a stop before the first tick still counts as a piece
        self._thread.start()
        return self

    def __exit__(self, *exc: Any) -> None:
        self._stop.set()
        self._thread.join()
        if exc[0] is not None:  # failed: keep the time spent for the piece that tries again
            self.save()


def _read_timer(path: Path) -> Dict[str, Any]:
    try:
        data = json.loads(path.read_text())
        return dict(cpu_seconds=float(data['cpu_seconds']), wall_seconds=float(data['wall_seconds']),
                    pieces=int(data['pieces']), load_sum=float(data.get('load_sum', 0.0)),
                    load_ticks=int(data.get('load_ticks', 0)))
    except FileNotFoundError:
        return dict(cpu_seconds=0.0, wall_seconds=0.0, pieces=0, load_sum=0.0, load_ticks=0)
    except (ValueError, KeyError, TypeError) as err:
        raise ValueError(f'{path}: unreadable stage timer ({err}); delete it to count this stage from now') from err


class StageLog:
    """``path`` (JSON lines): the stages done; :meth:`run` runs one unless it is done, and records it."""

    def __init__(self, path: Path, say: Callable[[str], None] = print, tick: float = TIMER_TICK_SECONDS) -> None:
        self.path = path
        self.timers = path.parent / f'{path.stem}.timers'
        self.done: Dict[str, Dict[str, Any]] = {rec['stage']: rec for rec in read_jsonl(path)}
        self.say, self.tick = say, tick

    def _timer_path(self, name: str) -> Path:
        return self.timers / (name.replace(':', '-').replace('/', '-') + '.json')

    def run(self, name: str, artifact: Path, fn: Callable[[], Dict[str, Any]],
            still_valid: Callable[[Dict[str, Any]], bool] = lambda rec: True,
            settings: Optional[Dict[str, Any]] = None, restart: Optional[Path] = None) -> Dict[str, Any]:
        """Run ``fn`` unless a record of ``name`` exists, its ``artifact`` too, and ``still_valid(record)``.

        ``fn`` returns the record's own fields. ``settings`` (what the stage's product depends on: epochs, the
        trunk it starts from, ...) go into the record; a record made with other settings is run again from the
        start: the resumable state ``restart`` (default ``artifact``'s sibling ``last/``) is dropped, with the
        time its pieces spent. Records written before settings were recorded are taken as they are."""
        settings = settings or {}
        restart = artifact.parent / 'last' if restart is None else restart
        timer_path = self._timer_path(name)
        rec = self.done.get(name)
        changed = rec is not None and 'settings' in rec and rec['settings'] != settings
        if rec is not None and artifact.exists() and (changed or not still_valid(rec)):
            self.say(f'{name}: done before with other settings, run again' if changed else
                     f'{name}: done before on other weights, run again')
            shutil.rmtree(restart, ignore_errors=True)
            timer_path.unlink(missing_ok=True)
        elif rec is not None and artifact.exists():
            self.say(f'{name}: done before ({rec["cpu_seconds"] / 60:.1f} CPU min), skipped')
            return rec
        with _Timer(timer_path, self.tick) as timer:
            if timer.pieces > 1:
                self.say(f'{name}: continued (piece {timer.pieces}; the earlier ones took '
                         f'{timer.cpu_before / 60:.1f} CPU min, {timer.wall_before / 60:.1f} min wall)')
            else:
                self.say(f'{name}: running')
            info = fn()
            spent = timer.totals()
        rec = dict(stage=name, cpu_seconds=spent['cpu_seconds'], wall_seconds=spent['wall_seconds'],
                   artifact=str(artifact), finished=time.strftime('%Y-%m-%dT%H:%M:%S%z'), cpu=cpu_model(),
                   threads=torch.get_num_threads(), cores=usable_cores(), settings=settings, **info)
        if spent['load_ticks']:
            rec['load_mean'] = round(spent['load_sum'] / spent['load_ticks'], 2)
        if spent['pieces'] > 1:
            rec['pieces'] = spent['pieces']
        with open(self.path, 'a') as f:
            f.write(json.dumps(rec) + '\n')
        timer_path.unlink(missing_ok=True)
        self.done[name] = rec
        pieces = f' in {spent["pieces"]} pieces' if spent['pieces'] > 1 else ''
        self.say(f'{name}: {rec["cpu_seconds"] / 60:.1f} CPU min, {rec["wall_seconds"] / 60:.1f} min wall{pieces}')
        return rec

    def note(self, name: str, text: str) -> Dict[str, Any]:
        """Add ``text`` to the note of the finished stage ``name`` (how it ran: paused, shared the machine, ...);
        the log is rewritten whole, through a temporary file."""
        if name not in self.done:
            known = ', '.join(self.done) or 'none yet'
            raise ValueError(f'{self.path}: no finished stage {name!r} (finished: {known})')
        if not text.strip():
            raise ValueError('the note is empty')
        rec = self.done[name]
        rec['note'] = f"{rec['note']}; {text.strip()}" if rec.get('note') else text.strip()
        records = read_jsonl(self.path)
        last = max(i for i, r in enumerate(records) if r['stage'] == name)  # the record ``done`` holds
        records[last] = rec
        write_atomic(self.path, ''.join(json.dumps(r) + '\n' for r in records).encode())
        return rec
