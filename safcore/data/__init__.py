"""The data and its fingerprint: MedMNIST flags and a user's ``.npz`` (``datasets``), a user's image files
(``images``), the SAF painted on ``x_p`` (``fingerprint``) and the folder a user's own trainer reads
(``fingerprint_io``)."""
