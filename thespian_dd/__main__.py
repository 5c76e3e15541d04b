"""``python -m thespian_dd``: the command line, whose parser and commands live in
:mod:`thespian_dd._cli` (the ``thespian-dd`` script calls the same ``main``)."""

import sys

from thespian_dd._cli.main import main

__all__ = ["main"]

if __name__ == "__main__":
    sys.exit(main(prog="python -m thespian_dd"))
