"""`Reconstructions`' figure: fixed inputs, each beside its reconstruction from the mean and from one posterior draw,
with its reconstruction NLL."""

from typing import Optional

import numpy as np

from lvae.drawing import Drawn
from lvae.figures.tiles import GAP, MARGIN, SMALL_PX, Sheet, cell_scale, cells, font, shorten

TRIPLE_GAP = 14  # between two inputs' triples


def draw(path: str, epoch: int, inputs: np.ndarray, means: np.ndarray, draws: np.ndarray, labels: list[str],
         index: list[int], nll: Optional[list[float]], note: str, nrow: int) -> Drawn:
    """The drawing job of `Reconstructions` (runs in the drawing process).

    inputs, means, draws: (n, H, W[, 3]) uint8, the inputs, their means decoded and one posterior draw decoded;
    labels, index: each input's label name and dataset index; nll: each input's reconstruction NLL in nats (None:
    the module gives none, `note` says why); nrow: inputs per row."""
    n = len(inputs)
    height, width = inputs.shape[1:3]
    per_row = min(nrow, n)
    fixed = 2 * MARGIN + (per_row - 1) * TRIPLE_GAP
    scale = cell_scale(height, width, 3 * per_row, fixed)
    pictures = cells(np.concatenate([inputs, means, draws]), scale)
    cw, ch = pictures[0].size
    triple_w = 3 * cw + 2 * GAP
    sheet_w = max(fixed + per_row * triple_w, 560)

    title = f"Reconstructions, epoch {epoch}: {n} fixed validation inputs"
    notes = ["Each: the input, its reconstruction from the mean of q(z|x), and from one posterior draw z ~ q(z|x). "
             + note]
    top = Sheet.title_height(title, notes, sheet_w)
    header_h = SMALL_PX + 4
    row_h = header_h + ch + 4 + SMALL_PX + 10
    rows = -(-n // per_row)
    sheet = Sheet(sheet_w, top + rows * row_h + MARGIN)
    sheet.title(title, notes)

    face = font(SMALL_PX)
    for i in range(n):
        x = MARGIN + (i % per_row) * (triple_w + TRIPLE_GAP)
        y = top + (i // per_row) * row_h
        for k, what in enumerate(("input", "mean", "draw")):
            sheet.text((x + k * (cw + GAP) + cw / 2, y), shorten(what, face, cw), SMALL_PX, anchor="ma")
            sheet.image.paste(pictures[k * n + i], (x + k * (cw + GAP), y + header_h))
        under = " · ".join(text for text in (labels[i], None if nll is None else f"NLL {nll[i]:.1f}") if text)
        sheet.text((x + triple_w / 2, y + header_h + ch + 3), shorten(under, face, triple_w), SMALL_PX, anchor="ma")

    shown = ", ".join(f"{label} (index {i}" + ("" if nll is None else f", NLL {value:.1f}") + ")"
                      for label, i, value in zip(labels, index, nll if nll is not None else [None] * n))
    return Drawn(pictures=[("reconstructions", sheet.save(path), f"Epoch {epoch}: {shown}. {note}")])
