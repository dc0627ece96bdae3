"""The work of ``probe.py intervene`` (``commands/intervene.py`` holds its flags): every input is
checked, in the order the flags are read, before the reader is trained or anything is sampled;
then each checkpoint is measured and written."""

from __future__ import annotations

import sys
from dataclasses import dataclass, field
from pathlib import Path

import torch

from diffprobe.commands.common import CommandError, flag
from diffprobe.commands.source import Source, load_explain_model


def log(message: str) -> None:
    print(f"probe.py intervene: {message}", file=sys.stderr)


@dataclass
class InterventionRun:
    source: Source
    folder: Path
    mode: str
    weights: str
    device: str
    dtype: str
    guidance: float | None
    seed: int
    batch_size: int
    overwrite: bool
    logdir: Path | None
    probes: Path | None  # the folder of probe.py linear's results
    concepts: dict[str, tuple[str, ...]] = field(default_factory=dict)
    chosen: list[str] = field(default_factory=list)
    settings: dict = field(default_factory=dict)

    # ---- 1. checks, in flag order ------------------------------------------------------------

    def load_first(self) -> None:
        self.model, _ = load_explain_model(self.source.files[0], weights=self.weights, device=self.device, guidance=self.guidance, dtype=self.dtype)
        self.stable_diffusion = self.source.files[0].kind == "stable-diffusion"
        self.T = int(self.model.scheduler_config["num_train_timesteps"])
        if self.mode == "switch" and not self.model.conditional:
            raise CommandError(
                f"--mode switch needs a conditional model (captions to switch between); {self.source.path} is unconditional. "
                "Use --mode steer, or train one with: python train.py fit --config configs/shapes_conditional.yaml"
            )
        if self.mode == "steer" and self.stable_diffusion:
            raise CommandError("--mode steer needs 'probe.py linear' results, which Stable Diffusion folders do not have; use --mode switch --pairs")

    def load_data(self, data: str | None, options: dict, count: int, reader_images: int) -> None:
        """The data set behind the captions and the reader: ConceptShapes unless told otherwise;
        none for Stable Diffusion without --data (its switched images are written unscored)."""
        from diffprobe.training.datamodules import ConceptShapesDataModule, HFDataModule

        self.data_module = None
        self.shapes = data in (None, "shapes") and not self.stable_diffusion
        if self.stable_diffusion and data is None:
            return
        trained_on = self._run_data()
        if data is None and trained_on is not None and not trained_on.endswith("ConceptShapesDataModule"):
            raise CommandError(
                f"{self.source.run_dir} was trained on {trained_on}, not ConceptShapes: give --data (its source) with --concept_columns "
                "for the captions and the concept reader"
            )
        unet = self.model.unet
        size = unet.config.sample_size if not self.stable_diffusion else 64
        if self.shapes:
            if size not in (16, 32, 64):
                raise ValueError(f"this model makes {size}x{size} images and ConceptShapes comes in 16, 32 or 64; give the model's own data set")
            self.data_module = ConceptShapesDataModule(image_size=size, train_size=reader_images, heldout_size=max(1000, count), batch_size=1)
        else:
            channels = 3 if self.stable_diffusion else unet.config.in_channels
            self.data_module = HFDataModule(data, image_size=size, channels=channels, batch_size=1, num_workers=0, **options)
        self.data_name, self.reader_images = data or "shapes", reader_images
        self.concepts = dict(self.data_module.concepts)

    def _run_data(self) -> str | None:
        """The data class (and source) the run was trained on, from its config.yaml; None unknown."""
        import yaml

        config = self.source.run_dir / "config.yaml" if self.source.run_dir else None
        if config is None or not config.is_file():
            return None
        try:
            data = (yaml.safe_load(config.read_text()) or {}).get("data") or {}
        except yaml.YAMLError:
            return None
        source = (data.get("init_args") or {}).get("source")
        return f"{data.get('class_path')}" + (f" ({source})" if source else "") if data.get("class_path") else None

    def choose_concepts(self, names: list[str] | None) -> None:
        if not self.concepts:
            self.chosen = names or []
            return
        unknown = [n for n in names or [] if n not in self.concepts]
        if unknown:
            raise CommandError(f"--concepts {unknown} not in the data; its concepts are {list(self.concepts)}")
        self.chosen = names or list(self.concepts)

    def choose_timesteps(self, schedule: str, steps: int, lam: float) -> None:
        from diffusers import DDPMScheduler

        from diffprobe.diffusion.timesteps import schedule_timesteps

        self.timesteps = schedule_timesteps(schedule, DDPMScheduler.from_config(self.model.scheduler_config), steps, lam)
        self.settings.update(schedule=schedule, steps=int(steps), lam=float(lam) if schedule != "uniform" else None)

    def _captioner(self):
        if self.shapes:
            from diffprobe.data.shapes import CONCEPT_NAMES, caption

            return lambda row: caption({name: int(v) for name, v in zip(CONCEPT_NAMES, row)})
        values = list(self.concepts.values())
        return lambda row: " ".join(values[k][int(v)] for k, v in enumerate(row))

    def _heldout_labels(self, count: int) -> torch.Tensor:
        heldout = self.data_module.heldout_dataset()
        if len(heldout) < count:
            raise CommandError(f"--num_captions {count}: the held-out data has only {len(heldout)} examples")
        if hasattr(heldout, "labels"):
            return heldout.labels[:count].clone()
        return torch.stack([heldout[i]["labels"] for i in range(count)])

    def plan_switch(self, switch_times: list[int] | None, pairs: list[tuple[str, str]] | None, count: int) -> None:
        from diffprobe.diffusion.timesteps import default_timesteps
        from diffprobe.intervene.switch import CaptionPairs, concept_pairs, encode_captions

        times = sorted({int(t) for t in switch_times}) if switch_times else default_timesteps(self.T)
        outside = [t for t in times if t > self.T]
        if outside:
            raise CommandError(
                f"--switch_times {outside} out of range: this model has {self.T} training timesteps, so t_s must be in [0, {self.T}] "
                f"(caption B below t_s; {self.T} switches before the first step)"
            )
        self.switch_times = times
        if pairs:
            if self.chosen and self.concepts and set(self.chosen) != set(self.concepts):
                raise CommandError("--concepts and --pairs: the pairs say which concept each one switches; leave out --concepts")
            self.groups = self._given_pairs(pairs, CaptionPairs)
            self.chosen = list(self.groups)
        else:
            if self.data_module is None:
                raise CommandError(f"{self.source.path} has no data set to make caption pairs from; give --pairs '[[caption A, caption B], ...]'")
            labels = self._heldout_labels(count)
            captioner = self._captioner()
            self.groups = {c: concept_pairs(labels, self.concepts, captioner, c, seed=self.seed) for c in self.chosen}
        for concept, group in self.groups.items():  # unknown words fail here, before any sampling
            with flag("--pairs" if pairs else f"captions of {concept}"):
                encode_captions(self.model, group.first[:1] + group.second)
                encode_captions(self.model, group.first)
        self.settings.update(switch_times=times, n=int(count) if not pairs else len(pairs), pairs=[list(p) for p in pairs] if pairs else None)

    def _given_pairs(self, pairs, CaptionPairs) -> dict:
        """Pairs the user wrote: scored by concept when they are ConceptShapes captions of a
        ConceptShapes model, kept as one unscored group otherwise."""
        if not self.shapes:
            return {"pairs": CaptionPairs("pairs", [a for a, _ in pairs], [b for _, b in pairs])}
        from diffprobe.data.shapes import CONCEPT_NAMES, parse_caption

        groups: dict[str, list] = {}
        for first, second in pairs:
            with flag("--pairs"):
                a, b = parse_caption(first), parse_caption(second)
            changed = [name for name in CONCEPT_NAMES if a[name] != b[name]]
            if len(changed) != 1:
                raise CommandError(f"--pairs: {first!r} and {second!r} differ in {changed or 'no concept'}; a pair must change exactly one concept")
            groups.setdefault(changed[0], []).append((first, second, a, b))
        made = {}
        for concept, items in groups.items():
            rows = [[torch.tensor([x[n] for n in CONCEPT_NAMES]) for x in (a, b)] for _, _, a, b in items]
            made[concept] = CaptionPairs(
                concept, [i[0] for i in items], [i[1] for i in items], torch.stack([r[0] for r in rows]), torch.stack([r[1] for r in rows])
            )
        return made

    def earlier_settings(self) -> dict:
        """The settings of the rows already in ``out`` for this mode ({} when there are none)."""
        from diffprobe.intervene import results

        return results.read_summary(self.folder).get("settings", {}).get(self.mode) or {}

    def check_settings(self) -> None:
        """Rows already in ``out`` were measured with the same settings and model, or ``--overwrite``.
        Steering: each concept's probe cell must agree where both calls steer it; new concepts add theirs."""
        earlier = self.earlier_settings() or None
        self.settings.update(seed=self.seed, guidance=self.guidance, source=str((self.source.run_dir or self.source.path).resolve()))
        current = dict(self.settings)
        if earlier is not None and "probes" in earlier and "probes" in current:
            shared = set(earlier["probes"]) & set(current["probes"])
            same = all(earlier["probes"][c] == current["probes"][c] for c in shared)
            self.settings["probes"] = {**earlier["probes"], **current["probes"]}
            earlier, current = {**earlier, "probes": same}, {**current, "probes": True}
        changed = sorted(k for k in set(earlier or {}) | set(current) if earlier is not None and earlier.get(k) != current.get(k))
        self.settings_changed = bool(changed)
        if changed and not self.overwrite:
            raise CommandError(
                f"{self.folder} holds --mode {self.mode} results made with other settings ({', '.join(changed)}); "
                "give a new --out, or --overwrite true to replace them"
            )

    def prepare_reader(self, path: Path | None, steps: int) -> None:
        from diffprobe.intervene.reader import READER_FILE, TrainedReader, train_reader

        self.reader = None
        if self.data_module is None:
            log("no data set: the switched images are written, not scored (give --data with concept columns to score them)")
            return
        path = path or self.folder / READER_FILE
        if path.is_file():
            with flag("--reader"):
                self.reader = TrainedReader.load(path)
            if self.reader.reader.concepts != {k: tuple(v) for k, v in self.concepts.items()}:
                raise CommandError(f"--reader {path} reads {list(self.reader.reader.concepts)}, not this data's concepts {list(self.concepts)}")
            log(f"concept reader {path}")
        else:
            log(f"training a concept reader on {self.data_name}'s clean images ({steps} steps)")
            self.folder.mkdir(parents=True, exist_ok=True)
            self.reader = train_reader(
                self.data_module.train_dataset(), self.data_module.heldout_dataset(), self.concepts, steps=steps, device=self.device, seed=self.seed,
                max_train_images=self.reader_images,
            )
            self.reader.save(path)
        self.reader.reader.to(self.device)
        accuracy = ", ".join(f"{k} {v:.3f}" for k, v in self.reader.accuracy.items())
        log(f"reader accuracy on {self.reader.n_heldout} clean held-out images: {accuracy}")
        short = [k for k, v in self.reader.accuracy.items() if v < 0.95 and k in self.chosen]
        if short:
            log(f"the reader is below 95% on {short}: their rates carry its errors (see intervene.json)")
        self.reader_path = path

    # ---- 2. measure and write ----------------------------------------------------------------

    def measure(self) -> Path:
        from diffprobe.commands.intervention_output import InterventionOutput
        from diffprobe.commands.intervention_steer import steered

        self.folder.mkdir(parents=True, exist_ok=True)
        output = InterventionOutput(self)
        for index, entry in enumerate(self.source.files):
            todo = output.todo(entry)
            if not todo:
                continue
            log(f"{entry.name} ({index + 1} of {len(self.source.files)}): {', '.join(todo)}")
            if index > 0:
                self.model, _ = load_explain_model(entry, weights=self.weights, device=self.device, guidance=self.guidance, dtype=self.dtype)
            for concept in todo:
                if self.mode == "switch":
                    output.switch(entry, concept, self._switch(concept))
                else:
                    output.steer(entry, concept, *steered(self, concept))
            output.checkpoint_done(entry)
        return output.finish()

    def _switch(self, concept: str) -> torch.Tensor:
        from diffprobe.intervene.switch import switched_images

        return switched_images(self.model, self.groups[concept], self.switch_times, self.timesteps, seed=self.seed, batch_size=self.batch_size)
