"""The models under audit and how they are made: the SDEs (``sde``), exact known-answer scores
(``known_answer``), safcore's score model (``score_model``), its training (``train``), the SDE samplers
(``sampling``), likelihoods (``likelihood``) and a diffusers model driven by its own scheduler
(``diffusers_model``)."""
