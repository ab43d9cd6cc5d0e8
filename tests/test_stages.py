"""StageLog: a stage is recorded once, and a stage stopped and continued reports the time of every piece."""
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from deephash_zoo.experiments.stages import StageLog
from deephash_zoo.experiments.zoo import _stage_notes


def _burn(seconds: float) -> None:
    end = time.process_time() + seconds
    while time.process_time() < end:
        pass


def _product(artifact: Path, seconds: float = 0.0):
    def fn():
        _burn(seconds)
        artifact.parent.mkdir(parents=True, exist_ok=True)
        artifact.write_text('done')
        return dict(steps=3)
    return fn


def test_a_stage_is_recorded_once_then_skipped(tmp_path):
    said = []
    log = StageLog(tmp_path / 'stages.jsonl', said.append)
    artifact = tmp_path / 'a' / 'product'
    rec = log.run('train:a', artifact, _product(artifact, 0.1), settings=dict(epochs=1))
    assert rec['steps'] == 3 and rec['cpu_seconds'] >= 0.1 and 'pieces' not in rec
    assert not list(log.timers.glob('*.json'))  # the timer goes once the record is written
    again = StageLog(tmp_path / 'stages.jsonl', said.append).run('train:a', artifact, _product(artifact),
                                                                 settings=dict(epochs=1))
    assert again == json.loads((tmp_path / 'stages.jsonl').read_text())
    assert said[-1].startswith('train:a: done before')


def test_a_failed_piece_counts_in_the_piece_that_finishes(tmp_path):
    log = StageLog(tmp_path / 'stages.jsonl', lambda s: None)
    artifact = tmp_path / 'a' / 'product'

    def interrupted():
        _burn(0.3)
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        log.run('train:a', artifact, interrupted)
    assert not (tmp_path / 'stages.jsonl').exists()
    rec = StageLog(tmp_path / 'stages.jsonl', lambda s: None).run('train:a', artifact, _product(artifact, 0.1))
    assert rec['pieces'] == 2 and rec['cpu_seconds'] >= 0.4


_KILLED_PIECE = '''
import sys, time
from pathlib import Path
from deephash_zoo.experiments.stages import StageLog
work = Path(sys.argv[1])
def forever():
    end = time.process_time() + 60
    while time.process_time() < end:
        pass
StageLog(work / 'stages.jsonl', print, tick=0.05).run('train:a', work / 'a' / 'product', forever)
'''


def test_a_killed_piece_counts_in_the_piece_that_finishes(tmp_path):
    """A process killed outright (SIGKILL: no handler runs) leaves its time in the timer file."""
    proc = subprocess.Popen([sys.executable, '-c', _KILLED_PIECE, str(tmp_path)])
    timer = tmp_path / 'stages.timers' / 'train-a.json'
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if timer.is_file() and json.loads(timer.read_text())['cpu_seconds'] > 0.3:
            break
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    killed = json.loads(timer.read_text())
    assert killed['pieces'] == 1 and killed['cpu_seconds'] > 0.3
    artifact = tmp_path / 'a' / 'product'
    said = []
    rec = StageLog(tmp_path / 'stages.jsonl', said.append).run('train:a', artifact, _product(artifact, 0.05))
    assert rec['pieces'] == 2 and rec['cpu_seconds'] >= killed['cpu_seconds'] + 0.05
    assert rec['wall_seconds'] >= killed['wall_seconds']
    assert any('continued (piece 2' in s for s in said) and not timer.exists()
    assert 'run in 2 pieces' in '; '.join(_stage_notes(rec))


def test_other_settings_start_again_without_the_old_pieces(tmp_path):
    log = StageLog(tmp_path / 'stages.jsonl', lambda s: None)
    artifact = tmp_path / 'a' / 'product'
    log.run('train:a', artifact, _product(artifact), settings=dict(epochs=1))
    (tmp_path / 'a' / 'last').mkdir()  # resumable state of the old settings
    log.timers.mkdir(exist_ok=True)
    (log.timers / 'train-a.json').write_text(json.dumps(dict(cpu_seconds=999.0, wall_seconds=999.0, pieces=4)))
    rec = log.run('train:a', artifact, _product(artifact), settings=dict(epochs=2))
    assert rec['settings'] == dict(epochs=2) and rec['cpu_seconds'] < 999 and 'pieces' not in rec
    assert not (tmp_path / 'a' / 'last').exists()


def test_an_unreadable_timer_is_a_one_line_error(tmp_path):
    log = StageLog(tmp_path / 'stages.jsonl', lambda s: None)
    log.timers.mkdir()
    (log.timers / 'train-a.json').write_text('{"cpu_seconds": 1')
    with pytest.raises(ValueError, match=r'train-a\.json: unreadable stage timer .*delete it'):
        log.run('train:a', tmp_path / 'a' / 'product', _product(tmp_path / 'a' / 'product'))


def test_each_tick_samples_the_load_and_a_busy_machine_is_noted(tmp_path, monkeypatch):
    monkeypatch.setattr('os.getloadavg', lambda: (5.0, 5.0, 5.0))
    log = StageLog(tmp_path / 'stages.jsonl', lambda s: None, tick=0.02)
    artifact = tmp_path / 'a' / 'product'

    def slow():
        time.sleep(0.2)
        return _product(artifact)()

    rec = log.run('train:a', artifact, slow)
    assert rec['load_mean'] == 5.0 and rec['cores'] >= 1
    assert any('ran beside other work (1-minute load 5.0' in n for n in _stage_notes(dict(rec, cores=2)))
    assert not any('beside other work' in n for n in _stage_notes(dict(rec, load_mean=2.3, cores=2)))


def test_a_note_is_added_to_the_last_record_of_a_stage(tmp_path):
    log = StageLog(tmp_path / 'stages.jsonl', lambda s: None)
    artifact = tmp_path / 'a' / 'product'
    log.run('train:a', artifact, _product(artifact), settings=dict(epochs=1))
    log.run('train:a', artifact, _product(artifact), settings=dict(epochs=2))  # built again: two records
    log.note('train:a', 'paused 5 min')
    log.note('train:a', 'tests ran beside it')
    lines = [json.loads(line) for line in (tmp_path / 'stages.jsonl').read_text().splitlines()]
    assert 'note' not in lines[0] and lines[1]['note'] == 'paused 5 min; tests ran beside it'
    assert StageLog(tmp_path / 'stages.jsonl').done['train:a']['note'] == lines[1]['note']
    with pytest.raises(ValueError, match=r"no finished stage 'eval:a' \(finished: train:a\)"):
        log.note('eval:a', 'x')


def test_cli_note_is_one_line_on_bad_requests(tmp_path, capsys):
    from deephash_zoo.cli._common import UserError
    from deephash_zoo.cli.zoo import main

    log = StageLog(tmp_path / 'stages.jsonl', lambda s: None)
    artifact = tmp_path / 'a' / 'product'
    log.run('train:a', artifact, _product(artifact))
    assert main(['note', '--plan', 'tiny', '--work', str(tmp_path), '--stage', 'train:a', '--text', 'shared']) == 0
    assert 'note is now: shared' in capsys.readouterr().out
    with pytest.raises(UserError, match='needs --stage NAME and --text'):
        main(['note', '--plan', 'tiny', '--work', str(tmp_path), '--stage', 'train:a'])
    with pytest.raises(UserError, match="no finished stage 'train:b'"):
        main(['note', '--plan', 'tiny', '--work', str(tmp_path), '--stage', 'train:b', '--text', 'x'])
    with pytest.raises(UserError, match='no stage log'):
        main(['note', '--plan', 'tiny', '--work', str(tmp_path / 'none'), '--stage', 'train:a', '--text', 'x'])
