"""Finetuning with preventative steering: SFT data, the Trainer run, the drift alarm, the finetuning shift."""
