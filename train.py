"""Train or fine-tune a DDPM UNet: python train.py fit --config configs/quickstart.yaml"""

from diffprobe import cpu

cpu.configure()  # before torch starts: OpenMP reads its CPU settings once (diffprobe/cpu.py says why)

from diffprobe.commands.train import train_main  # noqa: E402

if __name__ == "__main__":
    train_main()
