"""What every layer uses: where files live (``paths``), input checks before any work (``checks``), the
device (``device``), progress bars (``progress``) and the run store with its atomic writes (``runs``)."""
