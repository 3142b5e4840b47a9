"""`python eval/sweep.py`: a thin entry point; the command is sdm.cli.sweep."""

import sys

from sdm.cli.sweep import main

if __name__ == "__main__":
    sys.exit(main())
