"""`python eval/bench.py`: a thin entry point; the command is sdm.cli.bench."""

import sys

from sdm.cli.bench import main

if __name__ == "__main__":
    sys.exit(main())
