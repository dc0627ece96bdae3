"""Train or fine-tune a DDPM UNet: python train.py fit --config configs/quickstart.yaml"""

from diffprobe.commands.train import train_main

if __name__ == "__main__":
    train_main()
