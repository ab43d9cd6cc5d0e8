"""What every command shares: clean one-line errors instead of tracebacks."""
import sys
from typing import Callable, List, Optional

__all__ = ['run_main', 'UserError']


class UserError(Exception):
    """A problem with what the user asked for; printed as one line, exit status 2."""


def run_main(main: Callable[[Optional[List[str]]], int], argv: Optional[List[str]] = None) -> int:
    """Run ``main`` and turn expected failures (bad input, missing files, unknown names) into one line."""
    try:
        return main(argv)
    except (UserError, ValueError, FileNotFoundError, KeyError, ImportError) as e:
        message = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f'error: {message}', file=sys.stderr)
        return 2
    except RuntimeError as e:
        if 'Unknown model' in str(e):  # timm's message for a name nobody registered
            print(f'error: {e}; list them with `python -c "import deephash_zoo; '
                  f'print(deephash_zoo.list_hash_models())"`', file=sys.stderr)
            return 2
        raise
