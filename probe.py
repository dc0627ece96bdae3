"""Tools on checkpoints: python probe.py --help (probes, explanations, export, samples).

The same as the installed ``diffprobe-probe`` console script (``diffprobe.commands.probe.main``).
"""

from diffprobe.commands.probe import main

if __name__ == "__main__":
    main()  # sets diffprobe's CPU defaults before torch starts (diffprobe/cpu.py says why)
