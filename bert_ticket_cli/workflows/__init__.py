"""Multi-run procedures, one file each, read top to bottom as the algorithm: the verbs in
``commands/`` call one of them.  :mod:`.stages` holds what they share (the run preamble and the
resumable stage loop); :mod:`.training` trains and evaluates one model."""
