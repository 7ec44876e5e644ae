"""Statistics on samples and models: binomial bounds (``bounds``), copy criteria (``memorization``), held-out
controls (``control``), FID and the domain feature extractor (``metrics``), the sample-quality gate
(``quality``), utility (``utility``), membership inference (``peers``) and canaries (``canaries``)."""
