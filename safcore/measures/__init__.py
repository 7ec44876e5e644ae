"""Statistics on samples and models: binomial bounds (``bounds``), copy criteria (``memorization``), held-out
controls (``control``), FID (``fid``) over the feature extractors (``features``), the sample-quality gate
(``quality``), utility (``utility``), membership inference (``membership``) with its ROC numbers (``roc``), the
field's metrics on one model (``peers``) and canaries (``canaries``)."""
