"""The command layer: train.py and probe.py call a main here."""
