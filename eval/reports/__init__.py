"""What a user reads: the comparison command's report, plots, sweeps and the speed benchmark."""
