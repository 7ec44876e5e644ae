"""An interactive look at Algorithm 1: a t slider showing x_{t,p}, M reverse samples and the verdicts.

``explore(...)`` returns a :class:`ProbeExplorer`; as the last expression of a notebook cell it
displays as an ipywidgets app (a ``FloatSlider`` for t, an ``HTML`` verdict line and the matplotlib
figure in an ``Output``). ipywidgets is imported inside :func:`explore`, so ``safcore`` does not
need it otherwise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import torch

from safcore.probe.config import Classifier, SamplerMethod, ScoreFn
from safcore.probe.results import ProbeExample
from safcore.probe.runner import probe_at
from safcore.generators.sde import SDE

__all__ = ["ProbeExplorer", "explore", "verdict_text", "probe_figure"]


def verdict_text(ex: ProbeExample) -> str:
    """One line for the verdict label: ``t = 0.50: 3/8 positive (c_p 5/8, c_id 4/8), q_M(t) = 0.38``."""
    m = int(ex.c_p.shape[0])
    k = int(ex.positive.sum())
    return (
        f"t = {ex.t:.2f}: {k}/{m} positive (c_p {int(ex.c_p.sum())}/{m}, "
        f"c_id {int(ex.c_id.sum())}/{m}), q_M(t) = {k / m:.2f}"
    )


def probe_figure(x_p: torch.Tensor, ex: ProbeExample) -> Any:
    """Matplotlib figure (paper Fig. 4 style): top row ``x_p`` then the queries ``x_{t,p}``, bottom
    row their reverse samples titled with both verdicts (green frame = positive).

    Args:
        x_p: the SAF image, unit range, (C, H, W) or (1, C, H, W).
        ex: a :class:`ProbeExample`.
    """
    import matplotlib.pyplot as plt

    def show(ax: Any, img: torch.Tensor) -> None:
        img = img.detach().cpu()
        if img.shape[0] == 1:
            ax.imshow(img[0].numpy(), cmap="gray", vmin=0.0, vmax=1.0)
        else:
            ax.imshow(img.permute(1, 2, 0).numpy().clip(0.0, 1.0))
        ax.set_xticks([])
        ax.set_yticks([])

    m = int(ex.samples.shape[0])
    fig, axes = plt.subplots(2, m + 1, figsize=(1.3 * (m + 1), 3.0), squeeze=False)
    show(axes[0, 0], x_p.reshape(-1, *x_p.shape[-2:]))
    axes[0, 0].set_title("x_p", fontsize=8)
    axes[1, 0].axis("off")
    for j in range(m):
        show(axes[0, j + 1], ex.query[j])
        axes[0, j + 1].set_title(f"x_t, t={ex.t:.2f}", fontsize=7)
        ax = axes[1, j + 1]
        show(ax, ex.samples[j])
        pos = bool(ex.c_p[j] and ex.c_id[j])
        ax.set_title(
            f"c_p {'+' if ex.c_p[j] else '-'} c_id {'+' if ex.c_id[j] else '-'}",
            fontsize=7,
            color="green" if pos else "black",
        )
        for sp in ax.spines.values():
            sp.set_edgecolor("green" if pos else "lightgray")
            sp.set_linewidth(2.5 if pos else 0.5)
    fig.tight_layout()
    return fig


@dataclass(eq=False)
class ProbeExplorer:
    """The widgets of :func:`explore` and the latest evaluation.

    Attributes:
        widget: the app (``ipywidgets.VBox``: slider, verdict, output).
        slider: ``ipywidgets.FloatSlider`` for t.
        verdict: ``ipywidgets.HTML`` with :func:`verdict_text` of the latest t.
        output: ``ipywidgets.Output`` holding the figure.
        example: the latest :class:`ProbeExample` (queries, samples, verdicts).
        nfe: network evaluations spent by the latest update.
        update: re-run the probe at a t (what moving the slider calls).
    """

    widget: Any
    slider: Any
    verdict: Any
    output: Any
    update: Callable[[float], ProbeExample]
    example: ProbeExample | None = None
    nfe: int = 0
    figure: Any = field(default=None, repr=False)

    def _repr_mimebundle_(self, **kwargs: Any) -> Any:
        return self.widget._repr_mimebundle_(**kwargs)


def explore(
    score_fn: ScoreFn,
    sde: SDE,
    x_p: torch.Tensor,
    c_p: Classifier,
    c_id: Classifier,
    M: int = 8,
    *,
    t: float = 0.5,
    method: SamplerMethod = "euler_maruyama",
    steps_full: int = 1000,
    eps: float = 1e-3,
    seed: int = 0,
) -> ProbeExplorer:
    """Interactive Algorithm 1 at one t at a time (issue 5, item 5).

    Moving the slider diffuses ``x_p`` to ``x_{t,p} ~ p(x_t | x_p)``, runs the reverse sampler M
    times (``steps(t) = ceil((t-eps)/(1-eps)·steps_full)`` steps, as in :class:`safcore.probe.config.ProbeConfig`)
    and shows the queries, the samples and both classifiers' verdicts. Each update reseeds with
    ``seed``, so returning to a t shows the same draws.

    Args:
        score_fn: ``(x (B,C,H,W) model range, t (B,)) -> score``.
        sde: the forward SDE of the score model.
        x_p: the SAF image, unit range, (C, H, W) or (1, C, H, W).
        c_p, c_id: classifiers ``(B,C,H,W) unit range -> bool (B,)``.
        M: reverse samples per t.
        t: initial slider value (the slider spans 0.01 … 1 in steps of 0.01; t must exceed ``eps``).
        method, steps_full, eps: reverse sampler settings.
        seed: seed of the generator used at every update.

    Returns:
        :class:`ProbeExplorer` (display it, or use ``.widget``).
    """
    import ipywidgets as widgets
    import matplotlib.pyplot as plt
    from IPython.display import display

    if not (eps < t <= 1.0):
        raise ValueError(f"t={t!r}: the initial t must lie in (eps={eps}, 1]")
    device = x_p.device
    slider = widgets.FloatSlider(
        value=t, min=0.01, max=1.0, step=0.01, description="t", continuous_update=False,
        readout_format=".2f",
    )  # fmt: skip
    verdict = widgets.HTML(value="")
    output = widgets.Output()
    box = widgets.VBox([slider, verdict, output])

    def update(t_new: float) -> ProbeExample:
        gen = torch.Generator(device=device).manual_seed(int(seed))
        ex, nfe = probe_at(
            score_fn, sde, x_p, c_p, c_id, float(t_new), M,
            method=method, steps_full=steps_full, eps=eps, generator=gen,
        )  # fmt: skip
        fig = probe_figure(x_p, ex)
        with output:
            output.clear_output(wait=True)
            display(fig)
        plt.close(fig)
        app.example, app.nfe, app.figure = ex, nfe, fig
        verdict.value = f"<b>{verdict_text(ex)}</b> &nbsp; (NFE {nfe:,})"
        return ex

    app = ProbeExplorer(widget=box, slider=slider, verdict=verdict, output=output, update=update)
    slider.observe(lambda change: update(change["new"]), names="value")
    update(t)
    return app
