"""Training configs (``python train.py --config configs/<name>.py[:arg] --workdir DIR``; from any directory the
``configs/<name>.py`` path names the file of this package); shared pieces in ``common.py``, published model sizes in
``sizes.py`` (read from ``published/``)."""
