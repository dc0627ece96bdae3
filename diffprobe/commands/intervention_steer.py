"""``probe.py intervene --mode steer``: which probe cell each concept is steered with (checked
before anything is sampled), and the steered images of one checkpoint. ``self`` is the
``InterventionRun`` (``commands/intervention_run.py``)."""

from __future__ import annotations

from dataclasses import dataclass

from diffprobe.commands.common import CommandError, flag


@dataclass
class SteerPlan:
    """What one concept is steered with: the probe's cell, the two values and the captions."""

    layer: str
    t: int
    source: str
    target: str
    captions: list[str] | None


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


def plan_steer(self, target, source, layer, t, alphas: list[float], windows, count: int) -> None:
    """Each concept's probe cell, values and captions, the alphas and windows: all checked."""
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
    with flag("--probes"):
        self.probe_set = ProbeSet.load(set_path)
    self.plans: dict[str, SteerPlan] = {}
    labels = self._heldout_labels(count) if self.model.conditional else None
    for concept in self.chosen:
        values = list(self.concepts[concept])
        mine = [r for r in rows if r["concept"] == concept]
        if not mine or concept not in self.probe_set.concept_names:
            raise CommandError(f"no probe results for {concept!r} in {folder} (or its probe set); {hint}")
        newest = max(r["step"] for r in mine)
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
            cells_now = [r for r in mine if r["step"] == newest and (layer is None or r["layer"] == layer) and (t is None or r["t"] == t)]
            if not cells_now:
                raise CommandError(f"no probe result for {concept!r} at --layer {layer} --t {t} at step {newest}; {hint}")
            best = _steering_cell(cells_now)
        if best["t"] not in self.probe_set.timesteps.tolist():
            raise CommandError(f"the probe set {set_path} has no t = {best['t']} (its grid: {self.probe_set.timesteps.tolist()}); {hint}")
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
    empty = [w for w in windows if not any(w[0] <= t < w[1] for t in self.timesteps)]
    if empty:
        raise CommandError(f"--windows {empty} hold none of the sampler's timesteps ({len(self.timesteps)} steps); widen them or add --steps")
    self.alphas, self.windows = sorted(set(float(a) for a in alphas)), windows
    self.settings.update(
        alphas=self.alphas, windows=[list(w) for w in windows], n=int(count),
        probes={c: {"layer": p.layer, "t": p.t, "source": p.source, "target": p.target} for c, p in self.plans.items()},
    )  # fmt: skip


def steered(self, concept: str):
    """(direction, settings, unsteered images, steered images) of one concept on the current model."""
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
