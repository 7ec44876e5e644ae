"""Does the SAF survive a latent model's autoencoder? If not, the audit cannot see it.

A latent diffusion model (:class:`~safcore.generators.latent_model.LatentModel`) only ever makes images its
decoder can make: the best it can hand back of ``x_p`` is the autoencoder's own reconstruction
``x̂_p = decode(encode(x_p))``. When the autoencoder erases the SAF (the disc ``L_p`` of Eq. 10) from ``x̂_p``, no
sample can carry it, ``c_p`` cannot fire on a copy of ``x_p`` and ``|q|`` (and Algorithm 1's ``t'``) count nothing,
whatever the model memorised — as the CADP finding showed for the INN. :func:`autoencoder_check` measures it with
the audit's own adversary (``c_p``, ``c_id`` on ``x̂_p``) and in the disc itself: the share of the SAF's contrast
against the anatomy it covers that ``x̂_p`` keeps,

    kept = mean_{L_p} |x̂_p − x_i| / mean_{L_p} |x_p − x_i|     (1: the disc is intact, 0: the anatomy is back),

and :func:`with_autoencoder_finding` puts an erased SAF at the top of the verdict.
"""

from __future__ import annotations

import dataclasses

import torch

from safcore.audit.verdict import Verdict
from safcore.data.datasets import from_model_range, to_model_range

__all__ = ["AutoencoderCheck", "autoencoder_check", "with_autoencoder_finding"]


@dataclasses.dataclass(frozen=True)
class AutoencoderCheck:
    """What ``decode(encode(x_p))`` keeps of ``x_p`` (module docstring).

    Attributes:
        c_p: whether ``c_p`` fires on the reconstruction ``x̂_p`` (the adversary still sees the SAF).
        c_p_on_clean: the control: whether ``c_p`` fires on ``decode(encode(x_i))``, the reconstruction of the same
            image without its SAF (a ``c_p`` that fires there too does not see the SAF on ``x̂_p``).
        c_id: whether ``c_id`` recognises ``x̂_p`` as ``x_p``.
        mae: mean ``|x̂_p − x_p|`` over the image, unit range.
        disc_mae: the same inside the disc ``L_p``.
        saf_kept: the share of the SAF's contrast the disc keeps (module docstring; NaN when the disc has no contrast
            against the anatomy it covers).
    """

    c_p: bool
    c_p_on_clean: bool
    c_id: bool
    mae: float
    disc_mae: float
    saf_kept: float

    @property
    def saf_survives(self) -> bool:
        """Whether the adversary can see the SAF on what the model can at best hand back: ``c_p`` fires on ``x̂_p``
        and not on the SAF-free control ``decode(encode(x_i))``."""
        return self.c_p and not self.c_p_on_clean

    def describe(self) -> str:
        return (f"decode(encode(x_p)): c_p {'fires' if self.c_p else 'does NOT fire'} (on decode(encode(x_i)), the same "
                f"image without the SAF: {'fires' if self.c_p_on_clean else 'does not fire'}), c_id "
                f"{'recognises x_p' if self.c_id else 'does NOT recognise x_p'}; the disc keeps {self.saf_kept:.0%} of the "
                f"SAF's contrast (mean |error| {self.disc_mae:.3f} in the disc, {self.mae:.3f} over the image, unit range)")

    def to_dict(self) -> dict:
        return {**dataclasses.asdict(self), "saf_survives": self.saf_survives}


@torch.no_grad()
def autoencoder_check(gen, x_p: torch.Tensor, x_i: torch.Tensor, mask: torch.Tensor, c_p, c_id) -> AutoencoderCheck:
    """:class:`AutoencoderCheck` of a generator's ``encode`` → ``decode`` on ``x_p``.

    Args:
        gen: a :class:`~safcore.generators.base.Generator` (a pixel model's check is trivially perfect).
        x_p, x_i: ``(C, H, W)`` unit range: the SAF image and the training image it was painted on.
        mask: ``(H, W)`` the disc ``L_p`` (1 inside).
        c_p, c_id: the audit's classifiers, ``(B, C, H, W)`` unit range → bool ``(B,)``.
    """
    if x_p.ndim != 3 or x_i.shape != x_p.shape or mask.shape != x_p.shape[-2:]:
        raise ValueError(f"x_p {tuple(x_p.shape)}, x_i {tuple(x_i.shape)}, mask {tuple(mask.shape)}; allowed: x_p and "
                         "x_i (C, H, W), mask (H, W)")
    x = to_model_range(torch.stack([x_p.float(), x_i.float()])).to(gen.device)  # x_p and its SAF-free control
    both = from_model_range(gen.decode(gen.encode(x)).float().cpu()).clamp(0.0, 1.0)
    recon, recon_clean = both[:1], both[1:]
    x_p, x_i, inside = x_p.float().cpu(), x_i.float().cpu(), mask.cpu().bool().expand_as(x_p)
    err = (recon[0] - x_p).abs()
    contrast = float((x_p - x_i).abs()[inside].mean())
    kept = float((recon[0] - x_i).abs()[inside].mean()) / contrast if contrast > 0 else float("nan")
    return AutoencoderCheck(c_p=bool(torch.as_tensor(c_p(recon)).reshape(-1)[0]),
                            c_p_on_clean=bool(torch.as_tensor(c_p(recon_clean)).reshape(-1)[0]),
                            c_id=bool(torch.as_tensor(c_id(recon)).reshape(-1)[0]),
                            mae=float(err.mean()), disc_mae=float(err[inside].mean()), saf_kept=kept)


def with_autoencoder_finding(verdict: Verdict, check: AutoencoderCheck | None) -> Verdict:
    """``verdict`` with an erased SAF leading its headline: "the audit cannot see the SAF: the autoencoder erases
    it". A claim of absence (``"not_observed"``) then becomes ``"inconclusive"`` (``|q|`` cannot count what no
    sample can carry); a copy found stays a finding. ``check=None`` or a surviving SAF: ``verdict`` unchanged."""
    if check is None or check.saf_survives:
        return verdict
    lead = (f"The audit cannot see the SAF: the autoencoder erases it ({check.describe()}), so no sample can carry it "
            f"and |q| and t' count nothing. ")
    kind = "inconclusive" if verdict.kind == "not_observed" else verdict.kind
    reasons = verdict.reasons + (("the latent model's autoencoder erases the SAF from x_p",) if kind != verdict.kind
                                 else ())
    return Verdict(kind, lead + verdict.headline, reasons, verdict.warnings)
