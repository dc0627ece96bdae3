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


def _steering_cell(rows: list[dict]) -> dict:
    """The probe to steer with: at the largest t where some probe is significant and at least half
    as far above chance as the concept's best, the best layer there. A concept is steered where it
    is already readable but, at high t, not yet fixed; the best cell overall often sits at t near 0,
    where the image is all but finished."""
    def above(r):
        return (r["accuracy"] - r["chance"]) / max(1 - r["chance"], 1e-6)

    top = max(above(r) for r in rows)
    strong = [r for r in rows if r["significant"] and above(r) >= 0.5 * top] or rows
    return max(strong, key=lambda r: (r["t"], above(r)))


@dataclass
class SteerPlan:
    """What one concept is steered with: the probe's cell, the two values and the captions."""

    layer: str
    t: int
    source: str
    target: str
    captions: list[str] | None


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
        self.model, _ = load_explain_model(self.source.weights[0], device=self.device, raw=self.weights == "raw", guidance=self.guidance, dtype=self.dtype)
        self.stable_diffusion = self.source.weights[0].kind == "stable-diffusion"
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
        from diffprobe.data.module import ConceptShapesDataModule, HFDataModule

        self.data_module = None
        self.shapes = data in (None, "shapes") and not self.stable_diffusion
        if self.stable_diffusion and data is None:
            return
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

        from diffprobe.diffusion import schedule_timesteps

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
        from diffprobe.data.probe_set import default_timesteps
        from diffprobe.intervene.switch import CaptionPairs, concept_pairs, encode_captions

        times = sorted({int(t) for t in switch_times}) if switch_times else default_timesteps(self.T)
        outside = [t for t in times if t >= self.T]
        if outside:
            raise CommandError(f"--switch_times {outside} out of range: this model has {self.T} training timesteps, so t_s must be in [0, {self.T})")
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

    def plan_steer(self, target, source, layer, t, alphas: list[float], windows, count: int) -> None:
        from diffprobe.data.probe_set import ProbeSet
        from diffprobe.probes import results

        folder = self.probes
        rows = results.read_rows(folder) if folder is not None else []
        rows = [r for r in rows if r["weights"] == self.weights]
        hint = f"run: python probe.py linear --ckpt {self.source.path}" + ("" if self.source.run_dir else " (then give its folder as --probes)")
        if not rows:
            raise CommandError(f"--mode steer steers along a fitted probe's direction and found no '{self.weights}' probe results in {folder}; {hint}")
        if (target is not None or source is not None) and len(self.chosen) != 1:
            raise CommandError(f"--target / --source name values of one concept; give one --concepts (of {list(self.concepts)})")
        set_path = next((p for p in (folder / "probe_set.pt", self.source.run_dir and self.source.run_dir / "probe_set.pt") if p and p.is_file()), None)
        if set_path is None:
            raise CommandError(f"no probe_set.pt beside the probe results in {folder}; {hint}")
        self.probe_set = ProbeSet.load(set_path)
        newest = max(r["step"] for r in rows)
        self.plans: dict[str, SteerPlan] = {}
        labels = self._heldout_labels(count) if self.model.conditional else None
        for concept in self.chosen:
            values = list(self.concepts[concept])
            mine = [r for r in rows if r["concept"] == concept]
            if not mine:
                raise CommandError(f"no probe results for {concept!r} in {folder}; {hint}")
            cells = {(r["layer"], r["t"]) for r in mine}
            if layer is not None and layer not in {c[0] for c in cells}:
                raise CommandError(f"--layer {layer}: no probe results at it; probed layers: {sorted({c[0] for c in cells})}")
            if t is not None and t not in {c[1] for c in cells}:
                raise CommandError(f"--t {t}: not in the probe set's grid {sorted({c[1] for c in cells})}")
            earlier = self.earlier_settings().get("probes", {}).get(concept)
            if earlier and layer is None and t is None and (earlier["layer"], earlier["t"]) in cells:
                # The cell an earlier call chose: over training the same probe cell is steered with,
                # even when later checkpoints' probes would pick another.
                best = {"layer": earlier["layer"], "t": earlier["t"]}
            else:
                best = _steering_cell([r for r in mine if r["step"] == newest and (layer is None or r["layer"] == layer) and (t is None or r["t"] == t)])
            chosen_source, chosen_target = source or values[0], target or values[1]
            for name, value in (("--source", chosen_source), ("--target", chosen_target)):
                if value not in values:
                    raise CommandError(f"{name} {value!r} is not a value of {concept!r}; its values are {values}")
            if chosen_source == chosen_target:
                raise CommandError(f"--source and --target are both {chosen_target!r}; steer towards a different value")
            captions = None
            if labels is not None:
                steered = labels.clone()
                steered[:, list(self.concepts).index(concept)] = values.index(chosen_source)
                captions = [self._captioner()(row) for row in steered]
            self.plans[concept] = SteerPlan(best["layer"], int(best["t"]), chosen_source, chosen_target, captions)
        windows = [(int(w[0]), int(w[1])) for w in windows] if windows else [(self.T * i // 5, self.T * (i + 1) // 5) for i in range(5)]
        bad = [w for w in windows if not 0 <= w[0] < w[1] <= self.T]
        if bad:
            raise CommandError(f"--windows {bad}: each must be [start, end) with 0 <= start < end <= {self.T} (this model's T)")
        self.alphas, self.windows = sorted(set(float(a) for a in alphas)), windows
        self.settings.update(
            alphas=self.alphas, windows=[list(w) for w in windows], n=int(count),
            probes={c: {"layer": p.layer, "t": p.t, "source": p.source, "target": p.target} for c, p in self.plans.items()},
        )  # fmt: skip

    def earlier_settings(self) -> dict:
        """The settings of the rows already in ``out`` for this mode ({} when there are none)."""
        from diffprobe.intervene import results

        return results.read_summary(self.folder).get("settings", {}).get(self.mode) or {}

    def check_settings(self) -> None:
        """Rows already in ``out`` were measured with the same settings, or ``--overwrite``."""
        earlier = self.earlier_settings() or None
        self.settings.update(seed=self.seed, guidance=self.guidance)
        if earlier is not None and earlier != self.settings and not self.overwrite:
            changed = sorted(k for k in set(earlier) | set(self.settings) if earlier.get(k) != self.settings.get(k))
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

        self.folder.mkdir(parents=True, exist_ok=True)
        output = InterventionOutput(self)
        for index, entry in enumerate(self.source.weights):
            todo = output.todo(entry)
            if not todo:
                continue
            log(f"{entry.name} ({index + 1} of {len(self.source.weights)}): {', '.join(todo)}")
            if index > 0:
                self.model, _ = load_explain_model(entry, device=self.device, raw=self.weights == "raw", guidance=self.guidance, dtype=self.dtype)
            for concept in todo:
                if self.mode == "switch":
                    output.switch(entry, concept, self._switch(concept))
                else:
                    output.steer(entry, concept, *self._steer(concept))
            output.checkpoint_done(entry)
        return output.finish()

    def _switch(self, concept: str) -> torch.Tensor:
        from diffprobe.intervene.switch import switched_images

        return switched_images(self.model, self.groups[concept], self.switch_times, self.timesteps, seed=self.seed, batch_size=self.batch_size)

    def _steer(self, concept: str):
        from diffusers import DDPMScheduler

        from diffprobe.intervene.steer import SteerSetting, probe_direction, steered_images
        from diffprobe.probes.pipeline import extract_features

        plan = self.plans[concept]
        scheduler = DDPMScheduler.from_config(self.model.scheduler_config)
        encoder = self.model.extras.get("caption_encoder")
        condition = encoder.unconditional(1) if encoder is not None else None  # probes read the image, as probe.py linear fits them
        features = extract_features(self.model.unet, scheduler, self.probe_set, [plan.layer], batch_size=self.batch_size, condition=condition, only=[plan.t])
        k = self.probe_set.concept_names.index(concept)
        train, test = self.probe_set.split()
        direction = probe_direction(
            features[plan.layer][0].cpu(), self.probe_set.labels[:, k], self.probe_set.concepts[concept], layer=plan.layer, t=plan.t,
            concept=concept, target=plan.target, source=plan.source, train=train, test=test,
        )  # fmt: skip
        settings = [SteerSetting(v, a, w[0], w[1]) for v in ("probe", "random") for a in self.alphas for w in self.windows]
        plain, steered = steered_images(
            self.model, direction, settings, self.timesteps, num_images=self.settings["n"], captions=plan.captions, seed=self.seed,
            batch_size=self.batch_size, control_seed=self.seed,
        )  # fmt: skip
        return direction, settings, plain, steered
