"""Cut-based physics baselines on calorimeter images, and (weighted) ROC curves, AUC and cuts."""

from __future__ import annotations

import numpy as np

# A "jet" for the baseline: a local maximum of the image whose 3x3 neighbourhood holds at least
# JET_ET_MIN GeV. Hard jets of both classes pass; pile-up and noise (a few GeV) do not.
JET_ET_MIN = 100.0
# Weight of one counted jet relative to the log of the energy sum, i.e. the score ranks by the
# jet count first and by energy within a count, like "n_jets >= k and HT > X" selections.
# Both constants were chosen on synthetic events of a seed that no split uses (777).
JET_COUNT_WEIGHT = 1.0


def _flat(hist) -> np.ndarray:
    hist = np.asarray(hist)
    return hist.reshape(len(hist), -1)


def total_energy(hist) -> np.ndarray:
    """(N,) sum of all cells of (N, 64, 64[, 1]) images: the scalar sum of deposited energy.

    On these images it is HT (the scalar sum of jet pT) plus pile-up and noise, the classic
    discriminant of searches for heavy particles decaying to jets.
    """
    return _flat(hist).sum(axis=1, dtype=np.float64)


def count_jets(hist, et_min: float = JET_ET_MIN, chunk: int = 1024) -> np.ndarray:
    """(N,) number of local maxima whose 3x3 neighbourhood sum is >= et_min (GeV).

    Images are (N, eta, phi[, 1]); phi wraps around, eta does not. Plateaus count once at most
    per cell that is >= all 8 neighbours and > the ones before it in scan order.
    """
    hist = np.asarray(hist)
    if hist.ndim == 4:
        hist = hist[..., 0]
    out = np.empty(len(hist), np.int64)
    for start in range(0, len(hist), chunk):  # bounded temporaries for large inputs
        h = hist[start : start + chunk].astype(np.float32)
        # pad: phi periodically, eta with -inf (nothing beyond the detector edge)
        p = np.pad(h, ((0, 0), (0, 0), (1, 1)), mode="wrap")
        p = np.pad(p, ((0, 0), (1, 1), (0, 0)), constant_values=-np.inf)
        n_eta, n_phi = h.shape[1:]
        is_max = np.ones(h.shape, bool)
        box = np.zeros(h.shape, np.float32)
        for de in (-1, 0, 1):
            for dp in (-1, 0, 1):
                nb = p[:, 1 + de : 1 + de + n_eta, 1 + dp : 1 + dp + n_phi]
                box += np.where(np.isfinite(nb), nb, 0.0)
                if (de, dp) == (0, 0):
                    continue
                # ties: a cell beats equal neighbours that come later in scan order only
                earlier = (de, dp) < (0, 0)
                is_max &= (h > nb) if earlier else (h >= nb)
        out[start : start + chunk] = np.count_nonzero(is_max & (box >= et_min), axis=(1, 2))
    return out


def baseline_score(hist) -> np.ndarray:
    """(N,) a cut-based discriminant: jet count plus the log of the energy sum.

    The physicist's answer before deep learning: signal (gluinos -> 3 jets each) has a higher
    HT *and* more jets than QCD multijets. Higher means more signal-like.
    """
    e = total_energy(hist)
    return np.log(np.maximum(e, 1.0)) + JET_COUNT_WEIGHT * count_jets(hist)


def _check(y, score, weight):
    y = np.asarray(y)
    score = np.asarray(score, np.float64)
    if y.ndim != 1 or score.shape != y.shape:
        raise ValueError(
            f"y and score must be 1-D of the same length, got {y.shape} and {score.shape}"
        )
    if not np.all((y == 0) | (y == 1)):
        raise ValueError("labels y must be 0 or 1")
    if np.isnan(score).any():
        raise ValueError("score contains NaN")
    w = np.ones(len(y)) if weight is None else np.asarray(weight, np.float64)
    if w.shape != y.shape:
        raise ValueError(f"weight must have the shape of y {y.shape}, got {w.shape}")
    if (w < 0).any() or not np.isfinite(w).all():
        raise ValueError("weights must be finite and >= 0")
    y = y.astype(bool)
    if w[y].sum() <= 0 or w[~y].sum() <= 0:
        raise ValueError("need both signal (y=1) and background (y=0) with positive weight")
    return y, score, w


def _cumulative(y, score, weight):
    """Weighted true/false positives at each distinct threshold, highest score first."""
    y, score, w = _check(y, score, weight)
    order = np.argsort(-score, kind="mergesort")
    s, y, w = score[order], y[order], w[order]
    # one point per distinct score: tied events enter together (the ROC goes diagonally)
    last = np.r_[np.flatnonzero(np.diff(s)), len(s) - 1]
    tps = np.cumsum(w * y)[last]
    fps = np.cumsum(w * ~y)[last]
    return tps, fps, s[last]


def roc_curve(y, score, weight=None):
    """(fpr, tpr, thresholds): selecting score >= thresholds[i] gives (fpr[i], tpr[i]).

    Weighted when `weight` is given (physics weights: rates are fractions of the weighted
    cross-section). Starts at (0, 0) with threshold +inf; ties form a single point.
    """
    tps, fps, thr = _cumulative(y, score, weight)
    tpr = np.r_[0.0, tps / tps[-1]]
    fpr = np.r_[0.0, fps / fps[-1]]
    return fpr, tpr, np.r_[np.inf, thr]


def roc_auc(y, score, weight=None) -> float:
    """Area under the (weighted) ROC curve; a tie between a signal and a background counts 1/2."""
    fpr, tpr, _ = roc_curve(y, score, weight)
    return float(np.sum(np.diff(fpr) * (tpr[1:] + tpr[:-1]) / 2))  # trapezoids


def best_cut_accuracy(y, score, weight=None):
    """(accuracy, threshold) of the best single cut `score >= threshold` -> signal.

    Accuracy is weighted when `weight` is given. threshold=+inf means "call everything
    background" (the best cut when the background weight dominates, as with physics weights).
    """
    tps, fps, thr = _cumulative(y, score, weight)
    n_sig, n_bkg = tps[-1], fps[-1]
    acc = np.r_[n_bkg, tps + (n_bkg - fps)] / (n_sig + n_bkg)
    i = int(np.argmax(acc))
    return float(acc[i]), float(np.r_[np.inf, thr][i])
