"""`python -m factory_mas`: the command line, in factory_mas.cli."""

import sys

from .cli import main

if __name__ == "__main__":
    sys.exit(main())
