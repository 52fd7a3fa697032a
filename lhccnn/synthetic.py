"""A fast toy generator of RPV-SUSY (gluino -> 3 quarks) and QCD multijet calorimeter images."""

from __future__ import annotations

import logging
import os
from pathlib import Path

import numpy as np

from .config import IMAGE_SHAPE

log = logging.getLogger(__name__)

# Bump when the physics or the file layout changes: fetch.py treats files of another version
# as stale (they are regenerated with --force).
VERSION = 1

# Detector: a 64 x 64 calorimeter in (eta, phi). Cell values are transverse energies in GeV.
N_ETA, N_PHI = IMAGE_SHAPE[:2]
ETA_MAX = 2.5
D_ETA = 2 * ETA_MAX / N_ETA  # 0.078
D_PHI = 2 * np.pi / N_PHI  # 0.098

# Events are generated in blocks of BLOCK, each with its own RNG stream derived from
# (seed, block index): the content of a file then depends on the seed only, not on the
# chunk size used to write it, and generate(n, seed) is a prefix of generate(m > n, seed).
BLOCK = 1024

# Default split sizes for a small machine, and seed offsets so that the three files differ.
SPLITS = {
    "train": {"n": 16384, "seed_offset": 0},
    "val": {"n": 4096, "seed_offset": 1_000_003},
    "test": {"n": 4096, "seed_offset": 2_000_003},
}

# --- physics knobs, tuned so that the energy sum alone separates only partly (AUC ~0.82),
# jet counting helps (~0.89) and the default CNN does clearly better (~0.97) ---
HT_MIN = 1000.0  # trigger-like threshold on the parton-level HT of the QCD sample [GeV]
N_GEN = 3.2  # QCD generated with a flatter spectrum than nature (like pT-hat slices) ...
N_PHYS = 7.0  # ... and reweighted to the steeply falling physical one, dsigma/dHT ~ HT^-7
W_BKG = 400.0  # background weight at HT_MIN (cross-section x luminosity / events)
W_SIG = 0.012  # signal weight: 1.4 TeV gluino pairs have a ~1e5 times smaller cross-section
M_GLUINO = 1400.0
NOISE_SIGMA = 0.4  # electronic noise per cell [GeV]
NOISE_CUT = 1.2  # zero suppression: cells below 3 sigma are read out as 0 (keeps images sparse)
WINDOW = 7  # jets are rendered on a (2*WINDOW+1)^2 window: +-0.55 in eta, +-0.69 in phi


def split_seed(seed: int, split: str) -> int:
    """The seed of one split's file: the base seed plus a fixed per-split offset."""
    return int(seed) + SPLITS[split]["seed_offset"]


# ---------------------------------------------------------------------------------------------
# Rendering


def render(event, eta, phi, et, width, n_events, extra=None):
    """Deposit jets as showers into (n_events, 64, 64) float32 images.

    All arrays are (J,) over the jets of all events; `event` says which image a jet belongs to.
    Each shower is a narrow Gaussian core (sigma = width) plus a 3x wider halo with ~25 % of the
    energy, rendered as two separable outer products on a local window and scattered into the
    flat image with one bincount (much faster than a Python loop or np.add.at). phi wraps
    around: window columns beyond the edge land on the other side. Energy that falls outside
    ``|eta| < 2.5`` is lost, as in a detector.
    """
    event = np.asarray(event, np.int64)
    eta = np.clip(np.asarray(eta, np.float64), -9.0, 9.0)  # far-forward jets just miss the grid
    phi = np.asarray(phi, np.float64)
    et = np.asarray(et, np.float64)
    width = np.asarray(width, np.float64)
    k = np.arange(-WINDOW, WINDOW + 1)
    ie = np.floor((eta + ETA_MAX) / D_ETA).astype(np.int64)  # (J,) centre cell
    ip = np.floor((np.mod(phi + np.pi, 2 * np.pi)) / D_PHI).astype(np.int64) % N_PHI
    cells_e = ie[:, None] + k  # (J, W) cell indices; may be outside [0, 64) in eta
    cells_p = ip[:, None] + k
    # distances of the window's cell centres to the jet axis, in eta and phi units
    de = (cells_e + 0.5) * D_ETA - ETA_MAX - eta[:, None]
    dp = np.mod((cells_p + 0.5) * D_PHI - np.pi - phi[:, None] + np.pi, 2 * np.pi) - np.pi

    def profile(d, s):
        g = np.exp(-0.5 * (d / s[:, None]) ** 2)
        return g / g.sum(axis=1, keepdims=True)  # the whole energy lands in the window

    # Fold the energy, the core/halo split and the eta acceptance into the 1-D profiles, then
    # one batched matmul (J,W,2) @ (J,2,W) builds core + halo for all windows in a single pass.
    f_core = 0.75
    inside = (cells_e >= 0) & (cells_e < N_ETA)  # (J, W)
    scale = et[:, None] * inside
    rows = np.stack(
        [f_core * scale * profile(de, width), (1 - f_core) * scale * profile(de, 3.0 * width)], -1
    )  # (J, W, 2)
    cols = np.stack([profile(dp, width), profile(dp, 3.0 * width)], 1)  # (J, 2, W)
    kern = rows @ cols  # (J, W, W)
    flat = (event[:, None] * (N_ETA * N_PHI) + np.clip(cells_e, 0, N_ETA - 1) * N_PHI)[
        :, :, None
    ] + (cells_p % N_PHI)[:, None, :]
    flat, kern = flat.ravel(), kern.ravel()
    if extra is not None:  # (flat cell indices, energies) of single-cell deposits
        flat, kern = np.concatenate([flat, extra[0]]), np.concatenate([kern, extra[1]])
    img = np.bincount(flat, weights=kern, minlength=n_events * N_ETA * N_PHI)
    return img.reshape(n_events, N_ETA, N_PHI).astype(np.float32)


# ---------------------------------------------------------------------------------------------
# Kinematics. Each function returns per-jet arrays (event, eta, phi, pt) for n events.


def _compress_eta(x, limit=2.6):
    # Smoothly squeeze rapidities into the detector: a hard jet far outside |eta| < 2.5 would
    # not have fired the trigger, and a tanh avoids piling jets up at the edge like a clip does.
    return limit * np.tanh(x / limit)


def _qcd(rng, n):
    """QCD multijet: two hard, roughly balanced, back-to-back jets plus softer radiation."""
    u = rng.random(n)
    ht = HT_MIN * u ** (-1.0 / (N_GEN - 1.0))  # (n,) power law above the threshold
    # Radiation: more and harder jets at higher HT; occasionally hard (3-4 jet QCD mimics signal)
    n_rad = np.minimum(rng.poisson(2.4 + 1.0 * np.log(ht / HT_MIN)), 8)
    kmax = 8
    z = 0.02 + rng.exponential(0.08, (n, kmax))  # pT fractions of the radiation jets
    z *= np.arange(kmax)[None, :] < n_rad[:, None]
    ztot = z.sum(1)
    z *= np.minimum(1.0, 0.65 / np.maximum(ztot, 1e-9))[:, None]
    rest = 1.0 - z.sum(1)
    a = np.clip(np.abs(rng.normal(0, 0.12, n)), 0, 0.5)  # dijet pT asymmetry
    pt1, pt2 = ht * rest * (0.5 + a / 2), ht * rest * (0.5 - a / 2)
    # t-channel QCD: large rapidity separation y*, plus a longitudinal boost of the pair
    ystar = rng.normal(0, 0.75, n)
    yboost = rng.normal(0, 0.6, n)
    eta1, eta2 = _compress_eta(yboost + ystar), _compress_eta(yboost - ystar)
    phi1 = rng.uniform(-np.pi, np.pi, n)
    phi2 = phi1 + np.pi + rng.normal(0, 0.1 + 0.6 * (1 - rest), n)  # radiation unbalances
    # Radiation jets: final-state (near a hard jet) or initial-state (anywhere)
    fsr = rng.random((n, kmax)) < 0.55
    near2 = rng.random((n, kmax)) < 0.5
    dr = 0.35 + rng.exponential(0.45, (n, kmax))
    ang = rng.uniform(0, 2 * np.pi, (n, kmax))
    eta_h = np.where(near2, eta2[:, None], eta1[:, None])
    phi_h = np.where(near2, phi2[:, None], phi1[:, None])
    eta_r = np.where(fsr, eta_h + dr * np.cos(ang), _compress_eta(rng.normal(0, 1.6, (n, kmax))))
    phi_r = np.where(fsr, phi_h + dr * np.sin(ang), rng.uniform(-np.pi, np.pi, (n, kmax)))
    pt_r = z * ht[:, None]
    ev = np.arange(n)
    mask = pt_r > 0
    event = np.concatenate([ev, ev, np.broadcast_to(ev[:, None], (n, kmax))[mask]])
    eta = np.concatenate([eta1, eta2, eta_r[mask]])
    phi = np.concatenate([phi1, phi2, phi_r[mask]])
    pt = np.concatenate([pt1, pt2, pt_r[mask]])
    weight = W_BKG * (ht / HT_MIN) ** (-(N_PHYS - N_GEN)) * rng.lognormal(0, 0.3, n)
    return (event, eta, phi, pt), weight, ht


def _random_rotations(rng, n):
    """(n, 3, 3) uniformly random rotation matrices (from normalised random quaternions)."""
    q = rng.normal(size=(n, 4))
    q /= np.linalg.norm(q, axis=1, keepdims=True)
    w, x, y, z = q.T
    return np.stack(
        [
            np.stack([1 - 2 * (y * y + z * z), 2 * (x * y - z * w), 2 * (x * z + y * w)], -1),
            np.stack([2 * (x * y + z * w), 1 - 2 * (x * x + z * z), 2 * (y * z - x * w)], -1),
            np.stack([2 * (x * z - y * w), 2 * (y * z + x * w), 1 - 2 * (x * x + y * y)], -1),
        ],
        1,
    )


def _three_body(rng, m, beta):
    """Massless 3-body decays of particles of mass m moving with velocity beta (n, 3).

    Returns lab-frame 3-momenta (n, 3, 3) of the three quarks. Energies are drawn uniformly on
    the Dalitz plot (phase space), the decay plane is randomly oriented, then boosted.
    """
    n = beta.shape[0]
    x1, x2 = rng.random(n), rng.random(n)
    flip = x1 + x2 < 1  # fold the unit square onto the triangle x1 + x2 > 1, x_i < 1
    x1, x2 = np.where(flip, 1 - x1, x1), np.where(flip, 1 - x2, x2)
    x3 = 2 - x1 - x2
    e1, e2, e3 = x1 * m / 2, x2 * m / 2, x3 * m / 2
    cos12 = np.clip((e3**2 - e1**2 - e2**2) / (2 * e1 * e2), -1, 1)
    sin12 = np.sqrt(1 - cos12**2)
    p1 = np.stack([np.zeros(n), np.zeros(n), e1], -1)
    p2 = np.stack([e2 * sin12, np.zeros(n), e2 * cos12], -1)
    p = np.stack([p1, p2, -(p1 + p2)], 1)  # (n, 3 quarks, 3) in the rest frame
    p = np.einsum("nij,nkj->nki", _random_rotations(rng, n), p)
    e = np.linalg.norm(p, axis=-1)  # massless
    # Lorentz boost of (e, p) by beta
    b2 = np.sum(beta**2, -1, keepdims=True)
    gamma = 1 / np.sqrt(1 - b2)
    bp = np.einsum("nj,nkj->nk", beta, p)  # (n, 3)
    coef = (gamma - 1) / np.maximum(b2, 1e-12) * bp + gamma * e
    return p + coef[:, :, None] * beta[:, None, :]


def _gluinos(rng, n):
    """Pair-produced gluinos (1.4 TeV), each decaying to three quarks: 6 jets + radiation."""
    m = M_GLUINO
    pt = rng.gamma(2.0, 170.0, (n, 2))  # transverse momenta of the two gluinos
    phi0 = rng.uniform(-np.pi, np.pi, n)
    phi = np.stack([phi0, phi0 + np.pi + rng.normal(0, 0.5, n)], -1)
    y = rng.normal(0, 0.55, (n, 1)) + rng.normal(0, 0.7, (n, 2))  # near threshold: central-ish
    mt = np.sqrt(m**2 + pt**2)
    e = mt * np.cosh(y)
    mom = np.stack([pt * np.cos(phi), pt * np.sin(phi), mt * np.sinh(y)], -1)  # (n, 2, 3)
    beta = (mom / e[..., None]).reshape(2 * n, 3)
    q = _three_body(rng, m, beta).reshape(n, 6, 3)
    qpt = np.hypot(q[..., 0], q[..., 1])
    qeta = np.arcsinh(q[..., 2] / np.maximum(qpt, 1e-6))
    qphi = np.arctan2(q[..., 1], q[..., 0])
    # initial-state radiation jets
    kmax = 4
    n_isr = np.minimum(rng.poisson(1.2, n), kmax)
    isr_pt = (30 + rng.exponential(70, (n, kmax))) * (np.arange(kmax) < n_isr[:, None])
    isr_eta = _compress_eta(rng.normal(0, 1.6, (n, kmax)))
    isr_phi = rng.uniform(-np.pi, np.pi, (n, kmax))
    ev = np.arange(n)
    mask = isr_pt > 0
    event = np.concatenate([np.repeat(ev, 6), np.broadcast_to(ev[:, None], (n, kmax))[mask]])
    eta = np.concatenate([qeta.ravel(), isr_eta[mask]])
    phi_ = np.concatenate([qphi.ravel(), isr_phi[mask]])
    pt_ = np.concatenate([qpt.ravel(), isr_pt[mask]])
    weight = W_SIG * rng.lognormal(0, 0.05, n)
    ht = qpt.sum(1) + isr_pt.sum(1)
    return (event, eta, phi_, pt_), weight, ht


def _block(seed: int, block: int, n: int, signal_fraction: float):
    """Generate one block of n events from its own RNG stream."""
    rng = np.random.default_rng(np.random.SeedSequence(entropy=int(seed), spawn_key=(block,)))
    n_sig = int(round(signal_fraction * n))
    y = np.zeros(n, np.float32)
    y[:n_sig] = 1.0
    rng.shuffle(y)
    sig_idx, bkg_idx = np.flatnonzero(y == 1), np.flatnonzero(y == 0)
    (eb, etab, phib, ptb), wb, htb = _qcd(rng, len(bkg_idx))
    (es, etas, phis, pts), ws, hts = _gluinos(rng, len(sig_idx))
    event = np.concatenate([bkg_idx[eb], sig_idx[es]])
    eta = np.concatenate([etab, etas])
    phi = np.concatenate([phib, phis])
    pt = np.concatenate([ptb, pts])
    # jet energy resolution: stochastic 60%/sqrt(E) and constant 5% terms
    res = np.sqrt(0.6**2 / np.maximum(pt, 1.0) + 0.05**2)
    pt = pt * np.clip(1 + res * rng.standard_normal(pt.shape), 0.2, None)
    # shower width: narrower for harder jets, varying jet to jet (quark/gluon, fragmentation)
    width = np.clip(
        0.055 * (200.0 / np.maximum(pt, 20.0)) ** 0.25 * rng.lognormal(0, 0.25, pt.shape),
        0.035,
        0.2,
    )
    # soft pile-up: a varying number of particles per event, uniform in the detector; each is
    # narrower than a cell, so it goes into a single cell (cheap: no shower window) and is
    # scattered by the same bincount as the jets
    n_pu = rng.poisson(rng.uniform(20, 80, n))
    pu_flat = np.repeat(np.arange(n) * (N_ETA * N_PHI), n_pu) + rng.integers(
        0, N_ETA * N_PHI, n_pu.sum()
    )
    pu_et = rng.exponential(2.5, len(pu_flat))
    hist = render(event, eta, phi, pt, width, n, extra=(pu_flat, pu_et))
    # Calorimeter noise with zero suppression at 3 sigma, done sparsely for speed (a dense
    # Gaussian per cell was half the run time): smear the cells that are read out, and add the
    # rare pure-noise cells (P(z > 3) * 4096 = 5.5 per event) with energies from the tail.
    np.putmask(hist, hist < NOISE_CUT, 0.0)  # (a boolean-index assignment is 10x slower)
    flat = hist.reshape(-1)
    hit = np.flatnonzero(flat)
    flat[hit] += NOISE_SIGMA * rng.standard_normal(len(hit), dtype=np.float32)
    n_fake = rng.poisson(N_ETA * N_PHI * 1.35e-3, n)
    fake = np.repeat(np.arange(n) * (N_ETA * N_PHI), n_fake) + rng.integers(
        0, N_ETA * N_PHI, n_fake.sum()
    )
    flat[fake] += (NOISE_CUT + rng.exponential(NOISE_SIGMA**2 / NOISE_CUT, len(fake))).astype(
        np.float32
    )
    flat[hit[flat[hit] < NOISE_CUT]] = 0.0  # only smeared cells can have fallen below
    weight = np.empty(n, np.float32)
    weight[bkg_idx], weight[sig_idx] = wb, ws
    ht = np.empty(n)
    ht[bkg_idx], ht[sig_idx] = htb, hts
    return {"hist": hist, "y": y, "weight": weight, "ht": ht.astype(np.float32)}


def _as_seed(seed) -> int:
    if isinstance(seed, np.random.Generator):
        return int(seed.integers(2**63))  # deterministic given the generator's state
    return int(seed)


def _generate_range(seed: int, start_block: int, n: int, signal_fraction: float, truth: bool):
    parts = []
    b = start_block
    while n > 0:
        m = min(BLOCK, n)
        # a block is always drawn whole, so a short last block is a prefix of the full one
        part = _block(seed, b, BLOCK, signal_fraction)
        parts.append({k: v[:m] for k, v in part.items()})
        n -= m
        b += 1
    keys = ("hist", "y", "weight") + (("ht",) if truth else ())
    return {k: np.concatenate([p[k] for p in parts]) for k in keys}


def generate(
    n: int, seed: int | np.random.Generator, signal_fraction: float = 0.43, truth: bool = False
) -> dict:
    """Generate n events: dict(hist=(n,64,64) float32 GeV, y=(n,) float32, weight=(n,) float32).

    Deterministic for an integer seed. truth=True adds "ht", the generator-level scalar sum of
    jet pT (not in the files; for studies of what the images contain).
    """
    if n < 0:
        raise ValueError(f"n must be >= 0, got {n}")
    if not 0.0 <= signal_fraction <= 1.0:
        raise ValueError(f"signal_fraction must be in [0, 1], got {signal_fraction}")
    if n == 0:
        out = {
            "hist": np.zeros((0, N_ETA, N_PHI), np.float32),
            "y": np.zeros(0, np.float32),
            "weight": np.zeros(0, np.float32),
        }
        if truth:
            out["ht"] = np.zeros(0, np.float32)
        return out
    return _generate_range(_as_seed(seed), 0, n, signal_fraction, truth)


def write_file(
    path, n: int, seed: int, signal_fraction: float = 0.43, chunk: int = 4096, progress: bool = True
) -> Path:
    """Write n events to an HDF5 file with the dataset's schema, chunk by chunk.

    The file is written as a hidden temporary in the same directory and renamed at the end, so
    an interrupted run never leaves a half-written file under the final name. The content is
    that of generate(n, seed) whatever `chunk` is (rounded to whole blocks).
    """
    import h5py
    from tqdm.auto import tqdm

    path = Path(path)
    seed = _as_seed(seed)
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    chunk_blocks = max(1, chunk // BLOCK)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with h5py.File(tmp, "w") as f:
            f.attrs.update(
                generator="lhccnn.synthetic",
                seed=seed,
                n_events=n,
                version=VERSION,
                signal_fraction=signal_fraction,
            )
            g = f.create_group("all_events")
            # row chunks, no compression: training streams whole rows and is read-speed bound
            hist = g.create_dataset(
                "hist", (n, N_ETA, N_PHI), np.float32, chunks=(min(256, n), N_ETA, N_PHI)
            )
            y = g.create_dataset("y", (n,), np.float32)
            weight = g.create_dataset("weight", (n,), np.float32)
            with tqdm(total=n, desc=path.name, unit="ev", disable=not progress) as bar:
                for start in range(0, n, chunk_blocks * BLOCK):
                    m = min(chunk_blocks * BLOCK, n - start)
                    d = _generate_range(seed, start // BLOCK, m, signal_fraction, False)
                    hist[start : start + m] = d["hist"]
                    y[start : start + m] = d["y"]
                    weight[start : start + m] = d["weight"]
                    bar.update(m)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    log.info("wrote %s: %d events, seed %d", path, n, seed)
    return path
