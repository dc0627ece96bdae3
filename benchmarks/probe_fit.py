"""Batched probe fitting vs a loop of scikit-learn LogisticRegression fits, on the same features.

Features: a quick-start checkpoint's probe-set features (``--ckpt``), or planted features of the
same shape (15 timesteps x 300 images x 48 dims, 6 concepts). Both sides get the same
standardised features and the same objective (multinomial, L2, C = 1). Prints one JSON line last.

    python benchmarks/probe_fit.py
    python benchmarks/probe_fit.py --ckpt runs/quickstart/version_0/checkpoints/last.ckpt
"""

from __future__ import annotations

import argparse
import json
import time

import torch
from _timing import sync

from diffprobe.probes.fit import fit_probes, standardize


def planted_features(seed: int = 0):
    g = torch.Generator().manual_seed(seed)
    classes = [4, 6, 4, 3, 9, 4]
    labels = torch.stack([torch.randint(0, c, (300,), generator=g) for c in classes], 1)
    strength = torch.linspace(2.0, 0.0, 15).view(15, 1, 1)  # signal fades with t, as in a UNet
    features = torch.randn(15, 300, 48, generator=g)
    for k, c in enumerate(classes):
        directions = torch.randn(c, 48, generator=g) / 2
        features = features + strength * directions[labels[:, k]]
    return {"planted": features}, labels, classes


def checkpoint_features(path: str):
    from diffprobe.capture import default_layers
    from diffprobe.data.probe_set import ProbeSet
    from diffprobe.diffusion.timesteps import default_timesteps
    from diffprobe.probes.pipeline import extract_features
    from diffprobe.training import checkpoints
    from diffprobe.training.datamodules import ConceptShapesDataModule

    module = checkpoints.load_module(path)
    data = ConceptShapesDataModule(image_size=module.unet.config.sample_size, heldout_size=300, batch_size=1)
    probe_set = ProbeSet.from_dataset(data.heldout_dataset(), data.concepts, size=300, timesteps=default_timesteps(1000))
    with module.ema_weights():
        features = extract_features(module.unet, module.scheduler, probe_set, default_layers(module.unet), batch_size=300)
    return features, probe_set.labels, [len(v) for v in data.concepts.values()]


def main(argv=None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--ckpt", help="diffprobe checkpoint to take features from (default: planted features)")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu", help="where diffprobe fits (scikit-learn runs on the CPU)")
    args = parser.parse_args(argv)
    device = torch.device(args.device)
    from sklearn.linear_model import LogisticRegression

    features, labels, classes = checkpoint_features(args.ckpt) if args.ckpt else planted_features()
    train, test = torch.arange(0, 200), torch.arange(200, labels.shape[0])
    ours_s = theirs_s = 0.0
    differences, ours_acc, theirs_acc = [], [], []
    for values in features.values():
        on_device = values.to(device)
        fit_probes(on_device[:1, train], labels[train], on_device[:1, test], labels[test], classes, method="ridge")  # warm up the device
        sync(device)
        start = time.perf_counter()
        fit = fit_probes(on_device[:, train], labels[train], on_device[:, test], labels[test], classes, method="logistic")
        sync(device)
        ours_s += time.perf_counter() - start
        xtr, xte = standardize(values[:, train].float(), values[:, test].float())
        start = time.perf_counter()
        for p in range(values.shape[0]):
            for k in range(len(classes)):
                model = LogisticRegression(C=1.0, max_iter=1000).fit(xtr[p].numpy(), labels[train, k].numpy())
                accuracy = float((torch.from_numpy(model.predict(xte[p].numpy())) == labels[test, k]).float().mean())
                theirs_acc.append(accuracy)
                ours_acc.append(float(fit.accuracy[p, k]))
                differences.append(abs(accuracy - float(fit.accuracy[p, k])))
        theirs_s += time.perf_counter() - start
    result = {
        "features": "checkpoint" if args.ckpt else "planted",
        "device": args.device,
        "probes": len(differences),
        "diffprobe_s": round(ours_s, 3),
        "sklearn_loop_s": round(theirs_s, 3),
        "speedup": round(theirs_s / ours_s, 2),
        "mean_accuracy_diffprobe": round(sum(ours_acc) / len(ours_acc), 4),
        "mean_accuracy_sklearn": round(sum(theirs_acc) / len(theirs_acc), 4),
        "max_abs_accuracy_difference": round(max(differences), 4),
        "mean_abs_accuracy_difference": round(sum(differences) / len(differences), 4),
    }
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
