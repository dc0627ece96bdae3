"""Train or fine-tune a DDPM UNet: python train.py fit --config configs/quickstart.yaml"""

from diffprobe.cli import train_main

if __name__ == "__main__":
    train_main()
