"""Correlation quantification (paper): role totals of token relevance and rank correlations.

Per prompt "subject relation object" the paper sums each token's relevance over the steps of a run
(under each timestep schedule) and totals it by role; diffprobe adds a Spearman rank correlation
(with p-value) between the timestep and a token's relevance, or a probe's accuracy.

Undefined correlations: when either input is constant, Spearman's rho is undefined. Rather than
raise (one constant token would stop a whole sweep), ``spearman`` returns rho = p = nan with a
``note`` saying why. NaN is not valid strict JSON: ``jsonable`` turns results into plain JSON
values (nan -> None, (concept, layer) keys -> "concept/layer").
"""

from __future__ import annotations

import csv
import json
import math
import re
from dataclasses import asdict, dataclass, is_dataclass
from pathlib import Path

import torch

from diffprobe.choices import ProbeMetric
from diffprobe.probes.results import PROBE_TABLE

ROLES: tuple[str, ...] = ("subject", "relation", "object")
OTHER = "other"  # the role of words outside the three phrases ("a", "the", ...)


@dataclass
class Correlation:
    """Spearman's rank correlation of n pairs. ``rho`` and ``p_value`` (two-sided) are nan when
    undefined, and ``note`` says why (empty otherwise)."""

    rho: float
    p_value: float
    n: int
    note: str = ""


def spearman(x, y, *, exact_max_n: int = 8) -> Correlation:
    """Spearman's rho of two equally long sequences (lists, arrays or 1-D tensors), via scipy.

    p-value (two-sided): for n <= ``exact_max_n`` the exact permutation test over all n! pairings
    (scipy's t approximation says p = 0 for any perfect ranking, even of 3 points); above it,
    scipy's. A constant input gives rho = p = nan with a note (see the module docstring)."""
    from scipy.stats import spearmanr

    xs, ys = _floats(x, "x"), _floats(y, "y")
    if len(xs) != len(ys):
        raise ValueError(f"spearman needs equally long inputs, got {len(xs)} and {len(ys)} values")
    if len(xs) < 2:
        raise ValueError(f"spearman needs at least 2 pairs, got {len(xs)}")
    constant = [name for name, values in (("x", xs), ("y", ys)) if min(values) == max(values)]
    if constant:
        return Correlation(rho=math.nan, p_value=math.nan, n=len(xs), note=f"{' and '.join(constant)} constant: rank correlation undefined")
    result = spearmanr(xs, ys)
    rho = float(result.statistic)
    if len(xs) <= exact_max_n:
        return Correlation(rho=rho, p_value=_exact_p_value(xs, ys), n=len(xs), note="exact permutation p-value")
    return Correlation(rho=rho, p_value=float(result.pvalue), n=len(xs))


def _exact_p_value(xs: list[float], ys: list[float]) -> float:
    """Two-sided exact p of Spearman's rho: the share of all n! pairings of the ranks whose |rho| is
    at least the observed one (ties keep their average ranks), by scipy's exact permutation test."""
    import numpy as np
    from scipy.stats import permutation_test, rankdata

    rx, ry = rankdata(xs), rankdata(ys)
    rx, ry = rx - rx.mean(), ry - ry.mean()
    scale = math.sqrt((rx**2).sum() * (ry**2).sum())

    def abs_rho(ranks, axis=-1):  # vectorised over a batch of pairings: (..., n) -> (...)
        return np.abs(np.moveaxis(ranks, axis, -1) @ rx) / scale

    # |rho| with alternative "greater" counts both tails as the old enumeration did; scipy's own
    # "two-sided" doubles the smaller one-sided p, which differs when ties skew the null.
    result = permutation_test((ry,), abs_rho, permutation_type="pairings", vectorized=True, n_resamples=np.inf, alternative="greater")
    return float(result.pvalue)


def _floats(values, name: str) -> list[float]:
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().flatten().tolist()
    out = [float(v) for v in values]
    if any(not math.isfinite(v) for v in out):
        raise ValueError(f"spearman input {name} holds NaN or infinite values; drop those entries first")
    return out


@dataclass
class RoledWords:
    """Words of a prompt (or tokens of an encoded prompt) with the role of each: "subject",
    "relation", "object", or "other" for words outside the three phrases."""

    words: list[str]
    roles: list[str]


def _normalise(token: str) -> str:
    """Lower case, CLIP's end-of-word mark and punctuation dropped: "Horse</w>" -> "horse"."""
    return re.sub(r"[^0-9a-z]", "", token.lower().replace("</w>", ""))


def _find(units: list[str], phrase: str, start: int) -> tuple[int, int] | None:
    """First span [i, j) from ``start`` whose units spell ``phrase`` (case, spaces and punctuation
    aside), so a word split into several CLIP sub-word tokens still matches. With CLIP tokens
    (marked "</w>" at word ends) a span must also start and end on word boundaries: "man" does not
    match the tail of "wo" "man</w>"."""
    target = _normalise(phrase)
    tokens = [_normalise(u) for u in units]
    word_end = [u.endswith("</w>") for u in units]
    sub_words = any(word_end)
    for i in range(start, len(tokens)):
        if not tokens[i] or (sub_words and i > 0 and not word_end[i - 1]):
            continue  # a punctuation token or the middle of a word starts no phrase
        spelled = ""
        for j in range(i, len(tokens)):
            spelled += tokens[j]
            if spelled == target and (not sub_words or word_end[j]):
                return i, j + 1
            if not target.startswith(spelled):
                break
    return None


def parse_triple(prompt: str, subject: str, relation: str, object: str, *, words: list[str] | None = None) -> RoledWords:
    """Roles of the words of ``prompt`` = "... subject ... relation ... object ...", e.g.
    ("a man riding a horse", "man", "riding", "horse") -> roles other, subject, relation, other, object.

    ``words``: the units to label instead of ``prompt.split()``, e.g. ``Prompt.word_tokens`` of an
    encoded prompt (CLIP sub-word tokens work: a phrase matches the tokens that spell it). The
    phrases are found in order (the relation after the subject, the object after the relation), so
    "a dog chasing a dog" labels both dogs correctly."""
    units = prompt.split() if words is None else list(words)
    if not units:
        raise ValueError("parse_triple got an empty prompt")
    roles = [OTHER] * len(units)
    start = 0
    for role, phrase in zip(ROLES, (subject, relation, object)):
        if not _normalise(phrase):
            raise ValueError(f"the {role} phrase {phrase!r} is empty; give the {role} as it is written in the prompt")
        span = _find(units, phrase, start)
        if span is None:
            where = "" if start == 0 else f" after the {ROLES[ROLES.index(role) - 1]}"
            raise ValueError(
                f"the {role} {phrase!r} is not in the prompt {prompt!r}{where} (words: {units}); "
                "the prompt must read 'subject relation object' with each phrase spelled as in the prompt"
            )
        roles[span[0] : span[1]] = [role] * (span[1] - span[0])
        start = span[1]
    return RoledWords(words=units, roles=roles)


def role_totals(relevance: torch.Tensor, roles: list[str]) -> dict[str, float]:
    """relevance (steps, words), one role per word -> {role: relevance summed over the steps and the
    role's words}, roles in order of first appearance."""
    if relevance.dim() != 2:
        raise ValueError(f"relevance must be (steps, words), got shape {tuple(relevance.shape)}")
    if relevance.shape[1] != len(roles):
        raise ValueError(
            f"relevance has {relevance.shape[1]} words but {len(roles)} roles were given; give one role per word (parse_triple)"
        )
    per_word = relevance.detach().double().sum(0).cpu().tolist()
    totals: dict[str, float] = {}
    for role, value in zip(roles, per_word):
        totals[role] = totals.get(role, 0.0) + value
    return totals


def _unique_keys(words: list[str]) -> list[str]:
    """Repeated words get "#2", "#3", ... in order: ["a", "man", "a"] -> ["a", "man", "a#2"]."""
    seen: dict[str, int] = {}
    keys = []
    for word in words:
        seen[word] = seen.get(word, 0) + 1
        keys.append(word if seen[word] == 1 else f"{word}#{seen[word]}")
    return keys


def timestep_relevance_correlation(timesteps: list[int], relevance: torch.Tensor, words: list[str]) -> dict[str, Correlation]:
    """Per word: Spearman's rho between the timestep and the word's relevance over the steps.
    relevance (steps, words), one timestep per step. Repeated words are keyed "word#2", ...;
    a positive rho means the word matters more at high noise (early steps)."""
    if relevance.dim() != 2:
        raise ValueError(f"relevance must be (steps, words), got shape {tuple(relevance.shape)}")
    if relevance.shape[0] != len(timesteps):
        raise ValueError(f"relevance has {relevance.shape[0]} steps but {len(timesteps)} timesteps were given; give the run's timesteps")
    if relevance.shape[1] != len(words):
        raise ValueError(f"relevance has {relevance.shape[1]} words but {len(words)} words were given")
    return {key: spearman(timesteps, relevance[:, i]) for i, key in enumerate(_unique_keys(words))}


def role_relevance_correlation(timesteps: list[int], relevance: torch.Tensor, roles: list[str]) -> dict[str, Correlation]:
    """Per role: Spearman's rho between the timestep and the role's relevance (summed over its
    words) at each step. relevance (steps, words), one role per word."""
    if relevance.dim() != 2 or relevance.shape[1] != len(roles):
        raise ValueError(f"relevance must be (steps, words) with one role per word: shape {tuple(relevance.shape)}, {len(roles)} roles")
    if relevance.shape[0] != len(timesteps):
        raise ValueError(f"relevance has {relevance.shape[0]} steps but {len(timesteps)} timesteps were given")
    return {role: spearman(timesteps, values) for role, values in role_relevance(relevance, roles).items()}


def role_relevance(relevance: torch.Tensor, roles: list[str]) -> dict[str, torch.Tensor]:
    """relevance (steps, words), one role per word -> {role: (steps,) relevance summed over the
    role's words}, roles in order of first appearance."""
    if relevance.dim() != 2 or relevance.shape[1] != len(roles):
        raise ValueError(f"relevance must be (steps, words) with one role per word: shape {tuple(relevance.shape)}, {len(roles)} roles")
    return {
        role: relevance[:, [i for i, r in enumerate(roles) if r == role]].detach().double().sum(1).cpu() for role in dict.fromkeys(roles)
    }


def _probe_rows(path: Path) -> list[dict]:
    """Rows of ``probe.py linear``'s output: its folder, ``probes.csv`` or ``probes.json``."""
    if path.is_dir():
        found = [path / name for name in ("probes.csv", "probes.json") if (path / name).is_file()]
        if not found:
            raise FileNotFoundError(f"{path} holds no probes.csv or probes.json; run 'probe.py linear' first")
        path = found[0]
    if not path.is_file():
        raise FileNotFoundError(f"no probe results at {path}; give probe.py linear's output folder, probes.csv or probes.json")
    if path.suffix == ".json":
        stored = json.loads(path.read_text())
        rows = stored.get("rows", []) if isinstance(stored, dict) else stored  # a plain list: written before the summary
    elif path.suffix == ".csv":
        with path.open(newline="") as handle:
            rows = [PROBE_TABLE.parse(row) for row in csv.DictReader(handle)]
    else:
        raise ValueError(f"probe results must be probes.csv or probes.json, got {path.name}")
    if not rows:
        raise ValueError(f"{path} holds no probe results")
    return rows


def probe_accuracy_correlations(
    path: str | Path, *, metric: ProbeMetric = "accuracy", weights: str | None = None, step: int | None = None
) -> dict[tuple[str, str], Correlation]:
    """Per (concept, layer): Spearman's rho between t and the probe ``metric`` of ``probe.py
    linear``'s results (its output folder, ``probes.csv`` or ``probes.json``).

    Only one checkpoint's rows are used: the newest (largest global step; ties broken by the last
    checkpoint name in sort order) unless ``step`` is given. ``weights``: "ema" or "raw" when the
    file holds both; None takes the only kind present. A negative rho means the concept is more
    decodable at low noise."""
    rows = _probe_rows(Path(path))
    missing = {"step", "checkpoint", "weights", "layer", "t", "concept", metric} - set(rows[0])
    if missing:
        raise ValueError(f"{path} is not probe.py linear output: columns {sorted(missing)} are missing")
    kinds = sorted({str(r["weights"]) for r in rows})
    if weights is None:
        if len(kinds) > 1:
            raise ValueError(
                f"{path} holds probes of several weights {kinds}; choose one with weights="
            )
        weights = kinds[0]
    rows = [r for r in rows if str(r["weights"]) == weights]
    if not rows:
        raise ValueError(f"{path} holds no probes of {weights!r} weights, only {kinds}")
    steps = sorted({int(r["step"]) for r in rows})
    chosen = steps[-1] if step is None else step
    rows = [r for r in rows if int(r["step"]) == chosen]
    if not rows:
        raise ValueError(f"{path} holds no probes at step {step}; steps present: {steps}")
    name = max(str(r["checkpoint"]) for r in rows)
    rows = [r for r in rows if str(r["checkpoint"]) == name]

    series: dict[tuple[str, str], dict[int, float]] = {}
    for r in rows:
        series.setdefault((str(r["concept"]), str(r["layer"])), {})[int(r["t"])] = float(r[metric])
    out = {}
    for key, by_t in series.items():
        timesteps = sorted(by_t)
        out[key] = (
            spearman(timesteps, [by_t[t] for t in timesteps]) if len(timesteps) > 1 else Correlation(math.nan, math.nan, 1, "one t only")
        )
    return out


def jsonable(value):
    """Plain JSON values from results: dataclasses -> dicts, tuple keys -> "a/b", nan -> None,
    tensors -> lists. ``json.dumps(jsonable(result), allow_nan=False)`` then always works."""
    if is_dataclass(value) and not isinstance(value, type):
        value = asdict(value)
    if isinstance(value, dict):
        return {"/".join(map(str, k)) if isinstance(k, tuple) else str(k): jsonable(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [jsonable(v) for v in value]
    if isinstance(value, torch.Tensor):
        return jsonable(value.detach().cpu().tolist())
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
