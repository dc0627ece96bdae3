"""What ``probe.py intervene`` reads before it measures (``commands/intervene.py`` holds its flags):
the first model, the data behind the captions and the concept reader, the probe results steering
uses, and the reader itself. Every refusal is said in the flags' words, before a reader is trained
or anything is sampled."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from diffprobe.choices import DType, InterventionMode, Weights
from diffprobe.commands.common import CommandError, flag
from diffprobe.commands.concept_data import ConceptData, load_reader
from diffprobe.commands.intervene_output import log
from diffprobe.commands.source import Source, WeightsFile, load_explain_model
from diffprobe.data.probe_set import PROBE_SET_FILE, ProbeSet
from diffprobe.intervene.reader import READER_FILE, TrainedReader
from diffprobe.probes import results


@dataclass(frozen=True)
class Call:
    """The checked settings of one ``probe.py intervene`` call: what it measures and where it writes."""

    source: Source
    folder: Path  # --out
    logdir: Path | None  # TensorBoard; None outside a run without --logdir
    mode: InterventionMode
    weights: Weights
    device: str
    dtype: DType
    guidance: float | None
    seed: int
    batch_size: int
    overwrite: bool

    def load(self, entry: WeightsFile):
        """The ExplainModel of one checkpoint of ``--ckpt``."""
        model, _ = load_explain_model(entry, weights=self.weights, device=self.device, guidance=self.guidance, dtype=self.dtype)
        return model

    def first_model(self):
        """The first checkpoint's model, refused where ``--mode`` cannot work on it."""
        entry = self.source.files[0]
        model = self.load(entry)
        if self.mode == "switch" and not model.conditional:
            raise CommandError(
                f"--mode switch needs a conditional model (captions to switch between); {self.source.path} is unconditional. "
                "Use --mode steer, or train one with: python train.py fit --config configs/shapes_conditional.yaml"
            )
        if self.mode == "steer" and entry.kind == "stable-diffusion":
            raise CommandError(
                "--mode steer needs 'probe.py linear' results, which Stable Diffusion folders do not have; use --mode switch --pairs"
            )
        return model


def choose_concepts(names: Sequence[str], data: ConceptData) -> list[str]:
    """``--concepts`` (checked against the data's) or every concept of the data."""
    if not data.concepts:
        return list(names)
    unknown = [n for n in names if n not in data.concepts]
    if unknown:
        raise CommandError(f"--concepts {unknown} not in the data; its concepts are {list(data.concepts)}")
    return list(names) or list(data.concepts)


# ---- probe results (steering) ----------------------------------------------------------------


@dataclass(frozen=True)
class ProbeResults:
    """``probe.py linear``'s rows of ``--weights`` and the probe set they were fitted on."""

    folder: Path
    rows: list[dict]
    probe_set: ProbeSet
    probe_set_path: Path
    hint: str  # how to make the missing results, appended to refusals


def load_probe_results(folder: Path | None, call: Call) -> ProbeResults:
    source = call.source
    rows = [r for r in (results.read_rows(folder) if folder is not None else []) if r["weights"] == call.weights]
    hint = f"run: python probe.py linear --ckpt {source.path}" + ("" if source.run_dir else " (then give its folder as --probes)")
    if folder is None or not rows:  # (no folder: no rows)
        raise CommandError(
            f"--mode steer steers along a fitted probe's direction and found no '{call.weights}' probe results in {folder}; {hint}"
        )
    candidates = (folder / PROBE_SET_FILE, source.run_dir and source.run_dir / PROBE_SET_FILE)
    path = next((p for p in candidates if p and p.is_file()), None)
    if path is None:
        raise CommandError(f"no {PROBE_SET_FILE} beside the probe results in {folder}; {hint}")
    with flag("--probes"):
        probe_set = ProbeSet.load(path)
    return ProbeResults(folder, rows, probe_set, path, hint)


# ---- the concept reader ----------------------------------------------------------------------


@dataclass(frozen=True)
class ReaderFile:
    """The concept reader that judges the images, and where it is kept."""

    path: Path
    trained: TrainedReader

    def summary(self, data_name: str) -> dict:
        """What intervene.json records next to the rates the reader made."""
        return {"path": str(self.path), "data": data_name, "accuracy": self.trained.accuracy, "n_heldout": self.trained.n_heldout}


def prepare_reader(given: Path | None, call: Call, data: ConceptData, steps: int) -> ReaderFile | None:
    """``--reader``, else the one an earlier call kept in ``--out``, else the cached reader of this
    data (trained now when there is none); a copy is kept in ``--out`` beside the rates it judged.
    None without a data set: the images are written, not scored."""
    if data.module is None:
        log("no data set: the switched images are written, not scored (give --data with concept columns to score them)")
        return None
    kept = call.folder / READER_FILE
    path = given or (kept if kept.is_file() else None)
    trained = load_reader(path, data, steps=steps, seed=call.seed, device=call.device, command="intervene")
    if not kept.is_file():
        trained.save(kept)
    return ReaderFile(path or kept, trained)
