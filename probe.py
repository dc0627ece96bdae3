"""Tools on checkpoints: python probe.py --help (probes, explanations, export, samples)."""

from diffprobe import cpu

cpu.configure()  # before torch starts: OpenMP reads its CPU settings once (diffprobe/cpu.py says why)

from diffprobe.commands.probe import probe_main  # noqa: E402

if __name__ == "__main__":
    probe_main()
