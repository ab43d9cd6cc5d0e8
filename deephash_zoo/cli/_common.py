"""What every command shares: clean one-line errors instead of tracebacks, and documented exit statuses.

Exit statuses of every ``deephash-*`` command:

* 0: done.
* 1: the command ran but a check it reports failed (DDP replicas differ, an exported graph disagrees).
* 2: a bad request: wrong arguments, unreadable, missing or mismatched input, refused data; a Hub that cannot be
  reached counts here (the checkpoint is not found, the upload failed) (one line ``error: ...``).
* 3: the system refused: disk full, permission denied (one line ``error: ...``).
* 130: interrupted (Ctrl-C); what was being written is left whole or not at all.

``--debug`` (any command, or ``DEEPHASH_DEBUG=1``) shows the traceback instead of the one line.
"""
import errno
import os
import sys
from typing import Callable, List, Optional, Sequence, Tuple

__all__ = ['run_main', 'UserError', 'EXIT_BAD_REQUEST', 'EXIT_SYSTEM', 'EXIT_INTERRUPTED']

EXIT_BAD_REQUEST, EXIT_SYSTEM, EXIT_INTERRUPTED = 2, 3, 130


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def _system_message(e: OSError) -> str:
    where = f'{e.filename}: ' if getattr(e, 'filename', None) else ''
    what = e.strerror or str(e) or type(e).__name__
    if e.errno == errno.ENOSPC:
        what += ' (free some space, or write elsewhere)'
    return f'{where}{what}'


def _worker_message(text: str) -> str:
    """The original message of an error a DataLoader worker raised: torch re-raises it in the main process with
    "Caught X in DataLoader worker process N." and the worker's whole traceback as its message; the last line is
    "X: message"."""
    if not (text.startswith('Caught ') and 'Original Traceback' in text):
        return text
    last = text.rstrip().splitlines()[-1]
    name, sep, message = last.partition(': ')
    return message if sep and name.replace('.', '').replace('_', '').isalnum() else last


def print_skipped(skipped: Sequence[Tuple[str, str]], shown: Callable[[str], str] = str, limit: int = 5) -> None:
    """The first files skipped, with why, on stderr, and how many more: a count alone hid which."""
    for name, why in skipped[:limit]:
        print(f'skipped {shown(name)}: {why}', file=sys.stderr)
    if len(skipped) > limit:
        print(f'... and {len(skipped) - limit} more skipped', file=sys.stderr)


def run_main(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None) -> int:
    """Run ``main`` and turn expected failures (bad input, missing files, unknown names, an unreachable Hub, a
    full disk) into one line and the exit statuses above."""
    argv = list(sys.argv[1:] if argv is None else argv)
    debug = '--debug' in argv or os.environ.get('DEEPHASH_DEBUG', '') not in ('', '0')
    argv = [a for a in argv if a != '--debug']
    try:
        return main(argv)
    except KeyboardInterrupt:
        if debug:
            raise
        print('error: interrupted', file=sys.stderr)
        return EXIT_INTERRUPTED
    except (UserError, ValueError, FileNotFoundError, KeyError, ImportError) as e:
        if debug:
            raise
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'error: {_worker_message(str(message))}', file=sys.stderr)
        return EXIT_BAD_REQUEST
    except OSError as e:  # after FileNotFoundError: a missing input is the user's, a full disk the system's
        if debug:
            raise
        print(f'error: {_system_message(e)}', file=sys.stderr)
        return EXIT_SYSTEM
    except RuntimeError as e:
        if 'Unknown model' in str(e) and not debug:  # timm's message for a name nobody registered
            print(f'error: {e}; list them with `python -c "import deephash_zoo; '
                  f'print(deephash_zoo.list_hash_models())"`', file=sys.stderr)
            return EXIT_BAD_REQUEST
        raise
