"""TensorBoard tag names, in one place, and the writer commands share (no Lightning here: a
training run's writer is its logger's, ``training.tensorboard``).

Every tag that depends on a timestep carries the training index t (0 = clean end), zero-padded
to four digits: ``train/loss_by_t/t0000-0099``, ``probe/<concept>/<layer>/t0500/acc``.

Two ways scalars reach the run: what the training step measures on every batch (the loss, its
per-t buckets, the learning rate) goes through Lightning's ``log``; what an observer measures now
and then (OnlineProbes every N steps, a PeriodicObserver on rank zero) is written once, at the step
it was measured, with :func:`log_scalars` or the loggers' ``log_metrics``. (Lightning's ``log``
would re-write a value at every ``log_every_n_steps`` until it changes, is not allowed in
``on_train_end``, and waits for the other ranks.)
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Literal

if TYPE_CHECKING:  # tags only need strings: commands build them without loading torch
    from torch.utils.tensorboard import SummaryWriter


def t_tag(t: int) -> str:
    return f"t{int(t):04d}"


def bucket_tag(first: int, last: int) -> str:
    return f"t{int(first):04d}-{int(last):04d}"


LOSS = "train/loss"
LOSS_BY_T = "train/loss_by_t/{bucket}"
LEARNING_RATE = "train/lr"
EMA_DECAY = "train/ema_decay"
SAMPLES = "samples/{weights}"
SAMPLE_CAPTIONS = "samples/captions"

# PredictionEvolution
PRED_X0_HAT = "pred/x0_hat"
PRED_X_T = "pred/x_t"
PRED_TRAJECTORY = "pred/trajectory"
DENOISE_CURVES = "denoise/curves"


def denoise_tag(metric: str, t: int) -> str:
    """``denoise/<metric>/t0500``: x0_hat against x0 at t."""
    return f"denoise/{metric}/{t_tag(t)}"


def recovery_tag(metric: str, t: int) -> str:
    """``recovery/<metric>/t0500``: the concept recovered in x0_hat at t (ConceptShapes masks)."""
    return f"recovery/{metric}/{t_tag(t)}"


# AttentionRecorder
AttentionStatistic = Literal["entropy", "distance", "object_mass"]
CROSS_ATTENTION_CURVES = "cross_attention/mass_curves"


def attention_map_tag(layer: str) -> str:
    """``attention/<layer>``: where an object and a background query attend, a row per t."""
    return f"attention/{layer}"


def attention_statistic_tag(statistic: AttentionStatistic, layer: str, t: int) -> str:
    """``attention_entropy/<layer>/t0500``, ``attention_distance/...``, ``attention_object_mass/...``."""
    return f"attention_{statistic}/{layer}/{t_tag(t)}"


def token_name(index: int, word: str) -> str:
    """A caption token by position and word, ``03_red``: the same word may appear twice."""
    return f"{index:02d}_{word}"


def cross_attention_tag(token: str, t: int) -> str:
    return f"cross_attention/{token}/{t_tag(t)}"


def cross_attention_mass_tag(token: str, t: int) -> str:
    return f"cross_attention_mass/{token}/{t_tag(t)}"


def log_scalars(writer: SummaryWriter, values: Mapping[str, float], step: int) -> None:
    """Each tag -> value at ``step``: how a PeriodicObserver writes its scalars (module docstring)."""
    for tag, value in values.items():
        writer.add_scalar(tag, float(value), step)


def _flat(params: Mapping, prefix: str = "") -> dict[str, bool | int | float | str]:
    """Nested settings as TensorBoard's HPARAMS columns: ``unet/block_out_channels`` -> "[32, 64]"."""
    flat: dict[str, bool | int | float | str] = {}
    for key, value in params.items():
        if isinstance(value, Mapping):
            flat.update(_flat(value, f"{prefix}{key}/"))
        else:
            flat[f"{prefix}{key}"] = value if isinstance(value, (bool, int, float, str)) else str(value)
    return flat


def log_hyperparameters(writer: SummaryWriter, params: Mapping, metric_tags: list[str]) -> None:
    """The run's settings in the HPARAMS tab, which shows each of ``metric_tags`` (scalars the run
    logs anyway, e.g. ``train/loss``) at its latest value; nothing is logged under those tags here."""
    from torch.utils.tensorboard.summary import hparams

    experiment, start, end = hparams(_flat(params), dict.fromkeys(metric_tags, 0.0))
    file_writer = writer._get_file_writer()
    for summary in (experiment, start, end):
        file_writer.add_summary(summary)


PROBE_PREFIX = {"ema": "probe", "raw": "probe_raw", "online": "probe_online"}
CKPT_PROBE_PREFIX = {"ema": "probe_ckpt", "raw": "probe_ckpt_raw"}  # probe.py linear


def probe_tag(prefix: str, concept: str, layer: str, t: int | str) -> str:
    """``probe/<concept>/<layer>/t0500/acc``; ``t`` may be a bucket tag like ``t0000-0099``."""
    t_part = t if isinstance(t, str) else t_tag(t)
    return f"{prefix}/{concept}/{layer}/{t_part}/acc"


def probe_heatmap_tag(prefix: str, by: Literal["concept", "layer", "gain"], name: str) -> str:
    """``probe_heatmap/concept/<concept>`` (layer x t), ``probe_heatmap/layer/<layer>`` (concept x t),
    or ``probe_heatmap/gain/<concept>`` (layer x t: the gain over the better baseline)."""
    return f"{prefix}_heatmap/{by}/{name}"


# The group a reader starts from. TensorBoard sorts groups by plain string order and opens the
# first ones: "Overview" sorts before every lower-case group (attention/, probe/, train/ ...).
OVERVIEW = "Overview"
_SUMMARY_SOURCE = {"probe": "", "probe_raw": "_raw", "probe_ckpt": "_ckpt", "probe_ckpt_raw": "_ckpt_raw"}


SummaryName = Literal["decodable_t", "learned_t"]


def probe_summary_tag(prefix: str, concept: str, name: SummaryName = "decodable_t") -> str:
    """``Overview/decodable_t/<concept>``: the largest significantly decodable t (-1: at none);
    ``Overview/learned_t/<concept>``: the largest t where the gain over both baselines is
    significant (-1: at none); ``..._raw`` for ProbeMonitor's raw weights, ``..._ckpt`` for probe.py linear."""
    return f"{OVERVIEW}/{name}{_SUMMARY_SOURCE[prefix]}/{concept}"


def probe_summary_figure_tag(prefix: str, name: Literal["decodable_t", "learned_t", "decodability"]) -> str:
    """``Overview/decodable_t`` / ``Overview/learned_t`` (that t against step, a line per concept)
    and ``Overview/decodability`` (accuracy above chance against t with the baseline, a line per
    step), with the same suffixes, each ``..._over_training``."""
    return f"{OVERVIEW}/{name}{_SUMMARY_SOURCE[prefix]}_over_training"


def probe_layout(prefixes: list[str]) -> dict:
    """Custom-scalars layout: per set of probes the run will have (``probe``, ``probe_raw``; a chart
    for ``probe.py linear`` too, filled when it runs), the largest learned t and the largest
    decodable t of every concept against training step (hover a line for its concept)."""
    names = {"probe": "ProbeMonitor (EMA)", "probe_raw": "ProbeMonitor (raw)", "probe_ckpt": "probe.py linear"}
    charts = {names[prefix]: _SUMMARY_SOURCE[prefix] for prefix in [*prefixes, "probe_ckpt"]}
    layout = {}
    for name, suffix in charts.items():
        layout[f"learned: largest t above both baselines (-1: none), a line per concept: {name}"] = ["Multiline", [rf"{OVERVIEW}/learned_t{suffix}/.*"]]
        layout[f"decodable: largest t above chance (-1: none), a line per concept: {name}"] = ["Multiline", [rf"{OVERVIEW}/decodable_t{suffix}/.*"]]
    return {OVERVIEW: layout}


# ConceptFidelity (live) and probe.py fidelity (checkpoints)
FIDELITY_PREFIX = {"live": "fidelity", "ckpt": "fidelity_ckpt"}
RENDERED_SUMMARY = {"live": "rendered_at_step", "ckpt": "rendered_at_step_ckpt"}


def fidelity_tag(concept: str, source: Literal["live", "ckpt"] = "live") -> str:
    """``fidelity/<concept>``: the share of samples showing the caption's value (conditional) or the
    total variation to held-out data (unconditional); ``fidelity_ckpt/...`` from probe.py fidelity."""
    return f"{FIDELITY_PREFIX[source]}/{concept}"


def fidelity_figure_tag(source: Literal["live", "ckpt"] = "live") -> str:
    """``Overview/fidelity_over_training`` (``..._ckpt_...`` from probe.py fidelity): every concept's fidelity against step."""
    return f"{OVERVIEW}/{FIDELITY_PREFIX[source]}_over_training"


def rendered_tag(concept: str, source: Literal["live", "ckpt"] = "live") -> str:
    """``Overview/rendered_at_step/<concept>``: the first step from which the concept is rendered
    (-1: not yet)."""
    return f"{OVERVIEW}/{RENDERED_SUMMARY[source]}/{concept}"


# the explanation commands (probe.py rise | cam | lime | schedules | relevance | auc | groundtruth | correlation)
def explain_tag(tool: str, *parts: str) -> str:
    """``explain/<tool>/<part>/...``: an explanation command's images, figures and scalars."""
    return "/".join(("explain", tool, *parts))


def explain_step_tag(tool: str, index: int, t: int) -> str:
    """``explain/<tool>/step15_t0249``: the prefix of one explained step's images."""
    return explain_tag(tool, f"step{int(index):02d}_{t_tag(t)}")


# probe.py story
LEARNING_STORY = f"{OVERVIEW}/learning_story"  # per concept over training: rendered, learned, decodable, decided


# probe.py intervene
DECODABLE_VS_DECIDED = f"{OVERVIEW}/decodable_vs_decided"
INTERVENE_T_LOCK_OVER_TRAINING = "intervene/t_lock_over_training"


def intervene_tag(concept: str, name: Literal["cis", "t_lock", "steer"]) -> str:
    """``intervene/<concept>/cis`` (figure), ``.../t_lock`` (scalar, -1: none), ``.../steer`` (figure)."""
    return f"intervene/{concept}/{name}"


# probe.py discover: sparse dictionaries of the features (weights suffix as the probe tags: "" EMA, "_raw").
def discover_tag(concept: str, weights: str = "ema") -> str:
    return f"discover{'' if weights == 'ema' else '_' + weights}/{concept}/best_auroc"


def discover_gallery_tag(layer: str, t: int, weights: str = "ema") -> str:
    return f"discover{'' if weights == 'ema' else '_' + weights}/features/{layer}/{t_tag(t)}"


# probe.py hidden: the held-out combination's rate under each variant (plain, over_prompting, ...).
HIDDEN = "hidden"
