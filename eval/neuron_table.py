"""`python eval/neuron_table.py`: a thin entry point; the command is sdm.cli.neuron_table."""

import sys

from sdm.cli.neuron_table import main

if __name__ == "__main__":
    sys.exit(main())
