"""How results show: every TensorBoard tag (``tb``), the writer commands share, and pictures
(``viz``: grids, PNGs, matplotlib figures). No logger or Trainer access here."""
