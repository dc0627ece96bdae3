"""Tools on checkpoints: python probe.py --help (probes, explanations, export, samples)."""

from diffprobe.commands.probe import probe_main

if __name__ == "__main__":
    probe_main()
