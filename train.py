"""Train or fine-tune a DDPM UNet: python train.py fit --config configs/quickstart.yaml

The same as the installed ``diffprobe-train`` console script (``diffprobe.commands.train.main``).
"""

from diffprobe.commands.train import main

if __name__ == "__main__":
    main()  # sets diffprobe's CPU defaults before torch starts (diffprobe/cpu.py says why)
