"""safcore: will a diffusion model hand back an identifiable training image, and how likely is that?

A toolkit that reproduces Dombrowski et al. 2023, *Quantifying Sample Anonymity in Score-Based
Generative Models with Adversarial Fingerprinting*: paint a synthetic anatomic fingerprint (SAF) on
one training image, train a sub-VP score model, and audit it with an adversary (``c_p``, ``c_id``)
and with Algorithm 1's indicator ``t'``.
"""

__version__ = "0.1.0"
