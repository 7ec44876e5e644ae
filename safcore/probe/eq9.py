"""Paper Eq. 7–9: the forward kernel ``p(x_t | x_p)`` the probe draws its queries from, its noise std ``σ_t``,
and the Eq. 9 indicator ``Σ (σ_{t_{i+1}} − σ_{t_i}) · sup q`` up to t'.

:func:`diffuse` and :func:`marginal_std` are the kernel of a forward SDE, computed by
:class:`safcore.generators.base.SDEGenerator` (the one copy); the probe itself asks its model's
:class:`~safcore.generators.base.Generator` (an SDE's or a diffusers scheduler's kernel).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import numpy as np
import torch

from safcore.data.datasets import to_model_range
from safcore.generators.base import SDEGenerator
from safcore.generators.sde import SDE
from safcore.measures.bounds import proportion_interval
from safcore.probe.config import as_single_image

__all__ = ["diffuse", "marginal_std", "eq9_indicator"]


def _no_score(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    raise ValueError("the forward kernel of an SDE has no score; give the probe the model's score function")


def _kernel(sde: SDE) -> SDEGenerator:
    """The forward kernel of ``sde``: an :class:`~safcore.generators.base.SDEGenerator` without a score
    (diffuse and σ_t only)."""
    return SDEGenerator(_no_score, sde)


def diffuse(
    x_p_unit: torch.Tensor,
    t: float | torch.Tensor,
    sde: SDE,
    n: int,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``n`` noisy queries ``x_{t,p} ~ p(x_t | x_p) = N(a_t x_p, σ_t² I)`` (paper Eq. 7 context).

    The forward SDE's perturbation kernel (Song Eq. 29 for sub-VP), with ``(a_t x_p, σ_t) =
    sde.marginal_prob(x_p, t)`` (:meth:`safcore.generators.base.SDEGenerator.diffuse`).

    Args:
        x_p_unit: the image ``x_p`` in unit range, (C, H, W) or (1, C, H, W).
        t: a float, or a tensor (n,) of per-sample times, each in [0, 1].
        sde: the model's forward SDE.
        n: number of draws.
        generator: torch generator for the Gaussian noise (on ``x_p``'s device).

    Returns:
        ``x_{t,p}`` in MODEL range (the SDE's state, unbounded), shape (n, C, H, W).
    """
    x0 = to_model_range(as_single_image(x_p_unit)).unsqueeze(0).expand(n, -1, -1, -1)
    t_vec = torch.as_tensor(t, dtype=x0.dtype, device=x0.device)
    if t_vec.ndim == 0:
        t_vec = t_vec.expand(n)
    if t_vec.shape != (n,):
        raise ValueError(f"t must be a float or a tensor of shape ({n},), got shape {tuple(t_vec.shape)}")
    if bool(((t_vec < 0) | (t_vec > 1)).any()):
        raise ValueError(f"t outside [0, 1]: {t_vec[(t_vec < 0) | (t_vec > 1)].tolist()}")
    return _kernel(sde).diffuse(x0, t_vec, None, generator)


def marginal_std(sde: SDE, ts: Sequence[float] | np.ndarray) -> np.ndarray:
    """``σ_t`` of ``p(x_t | x_0)`` for each t (the sub-VP std is ``1 - e^{2 lmc(t)}``), shape (T,)."""
    return _kernel(sde).marginal_std(ts)


def eq9_indicator(
    grid: Sequence[float] | np.ndarray,
    k: Sequence[int] | np.ndarray,
    n: Sequence[int] | np.ndarray,
    sigma: Sequence[float] | np.ndarray | Callable[[np.ndarray], np.ndarray],
    *,
    confidence: float = 0.95,
) -> float:
    """The paper's Eq. 9 sum with upper limits of q: ``Σ_{i=0}^{t'} (σ_{t_{i+1}} - σ_{t_i}) · sup_{[t_i, t_{i+1}]} q``.

    Nodes: ``t_0 = 0`` (with ``σ_0 = 0``) and the grid ``t_1 < ... < t_N``. The sum runs over the
    intervals ``[t_0, t_1], [t_1, t_2], ...`` up to and including the one whose lower end is ``t'``
    (the largest grid t with ``k > 0``; the paper's ``Σ_{i=0}^{t'}``); when t' is the top of the grid
    it stops there, and with no t' it is the interval ``[0, t_1]`` alone. The sup of q over an interval
    is the larger of its endpoints' upper limits ``u``:

    * ``u_i`` = upper end of the two-sided exact (Clopper–Pearson) ``confidence`` interval of
      ``k_i`` of ``n_i`` (the top of the band in Fig. 6/9) — not the point estimate ``k_i / n_i``;
    * ``u = 1`` where q was not measured: at ``t_0 = 0`` (below the grid) and at every grid t with
      ``n_i = 0`` (the top-down search draws nothing below t').

    What it is: the indicator of paper Eq. 7–9, ``∫ q dσ_t`` up to t', i.e. t' measured on the σ scale
    and weighted by how often ``x_p`` comes back below it. It is NOT a probability of generating
    ``x_p`` (it reaches 0.86 for a model that generates ``x_p`` in about 3 % of its samples). It is an
    upper Darboux sum of that integral when q is monotone on each grid interval, with each ``u_i``
    holding at 95 % for its own t (not jointly over the grid).

    Args:
        grid: the grid t (N,), distinct, any order.
        k, n: positives and samples drawn at each grid t (N,); ``n = 0`` means "not evaluated".
        sigma: ``σ_t`` at ``grid`` (N,), or a callable mapping an array of t to σ (e.g.
            ``lambda t: marginal_std(sde, t)`` or a generator's ``marginal_std``).
        confidence: of the two-sided interval whose upper end is used.

    Returns:
        The sum, in ``[0, σ_max]``.
    """
    t = np.asarray(grid, dtype=np.float64).reshape(-1)
    kv = np.asarray(k).reshape(-1)
    nv = np.asarray(n).reshape(-1)
    s = np.asarray(sigma(t) if callable(sigma) else sigma, dtype=np.float64).reshape(-1)
    if not (t.shape == kv.shape == nv.shape == s.shape):
        raise ValueError(f"grid, k, n and sigma must have the same length, got {t.size}, {kv.size}, {nv.size}, {s.size}")
    if t.size == 0:
        raise ValueError("eq9_indicator needs at least one grid t")
    if np.unique(t).size != t.size:
        raise ValueError(f"the grid must be distinct, got {t.tolist()}")
    if np.any(kv != np.round(kv)) or np.any(nv != np.round(nv)) or np.any(kv < 0) or np.any(kv > nv):
        raise ValueError(f"need integer counts 0 <= k <= n, got k={kv.tolist()}, n={nv.tolist()}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence!r} must lie in (0, 1), e.g. 0.95")
    order = np.argsort(t)
    kv, nv, s = kv[order].astype(np.int64), nv[order].astype(np.int64), s[order]
    u = np.array([1.0 if ni == 0 else proportion_interval(ki, ni, confidence)[1] for ki, ni in zip(kv, nv)])
    nodes_s = np.concatenate([[0.0], s])
    nodes_u = np.concatenate([[1.0], u])
    positive = np.flatnonzero(kv > 0)
    last = int(positive.max()) + 1 if positive.size else 0  # node index of t' (0: below the grid)
    m = min(last, t.size - 1)  # index of the last interval summed
    widths = np.diff(nodes_s)[: m + 1]
    sups = np.maximum(nodes_u[:-1], nodes_u[1:])[: m + 1]
    return float(np.sum(widths * sups))
