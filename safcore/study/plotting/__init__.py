"""Figures of the paper and of the notebooks, drawn from safcore's results (matplotlib + seaborn).

Every function returns a :class:`matplotlib.figure.Figure` (its axes in reading order in
``fig.axes``) and draws nothing else; :func:`save_figure` writes one as PNG atomically. Images are
unit-range tensors or arrays, ``(C, H, W)`` / ``(B, C, H, W)`` with C = 1 or 3 (or ``(H, W)``);
grey ones are shown with ``cmap="gray", vmin=0, vmax=1``, colour ones transposed to ``(H, W, 3)``.

One module per family, every name re-exported here (``from safcore.study import plotting; plotting.q_curve(...)``):

- ``images``: :func:`image_grid`, :func:`saf_construction` (Eq. 10), :func:`samples_vs_nearest`,
  :func:`samples_by_group` (Fig. 5), :func:`reverse_examples` (Fig. 4), :func:`augmented_examples` (Fig. 7),
  :func:`error_map` (Fig. 10, left);
- ``audit``: :func:`audit_gallery` (Fig. 8), the audit's own checks :func:`samples_overview` (every q-positive
  framed) and :func:`copies_per_image`, and :func:`xp_and_samples` (notebook 07: x_p beside its copies per dataset);
- ``probe``: :func:`q_curve` (Fig. 6/9);
- ``curves``: :func:`training_curves`, :func:`loss_curve`, :func:`memorization_vs_steps` (Fig. 3/10, right);
- ``defences``: :func:`defences_vs_epsilon` and :func:`defence_images` (notebook 09);
- ``peers``: :func:`peers_vs_n_d` (notebook 10).
"""

from safcore.study.plotting._base import GROUP_COLOURS, HIGHLIGHT_COLOUR, save_figure
from safcore.study.plotting.audit import audit_gallery, copies_per_image, samples_overview, xp_and_samples
from safcore.study.plotting.curves import loss_curve, memorization_vs_steps, training_curves
from safcore.study.plotting.defences import defence_images, defences_vs_epsilon
from safcore.study.plotting.images import (
    augmented_examples,
    error_map,
    image_grid,
    reverse_examples,
    saf_construction,
    samples_by_group,
    samples_vs_nearest,
)
from safcore.study.plotting.peers import peers_vs_n_d
from safcore.study.plotting.probe import q_curve

__all__ = [
    "GROUP_COLOURS",
    "HIGHLIGHT_COLOUR",
    "audit_gallery",
    "augmented_examples",
    "copies_per_image",
    "defence_images",
    "defences_vs_epsilon",
    "error_map",
    "image_grid",
    "loss_curve",
    "memorization_vs_steps",
    "peers_vs_n_d",
    "q_curve",
    "reverse_examples",
    "saf_construction",
    "samples_by_group",
    "samples_overview",
    "samples_vs_nearest",
    "save_figure",
    "training_curves",
    "xp_and_samples",
]
