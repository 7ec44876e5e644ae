"""The adversary: ``c_p`` (does a sample carry the SAF?) and ``c_id`` (is it ``x_p``?) (``classifiers``)."""
