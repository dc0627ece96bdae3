"""Tools on checkpoints: python probe.py {export,sample} --ckpt runs/.../checkpoints/last.ckpt ..."""

from diffprobe.cli import probe_main

if __name__ == "__main__":
    probe_main()
