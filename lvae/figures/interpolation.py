"""`LatentInterpolation`'s figure: one row per pair of inputs, their means joined by a straight line, decoded."""

import numpy as np

from lvae.drawing import Drawn
from lvae.figures.tiles import GAP, MARGIN, SMALL_PX, TEXT_PX, Sheet, cell_scale, cells, font

END_GAP = 10  # between an input and the decoded line


def draw(path: str, epoch: int, ends: np.ndarray, lines: np.ndarray, t: np.ndarray, labels: list[tuple[str, str]],
         index: list[tuple[int, int]]) -> Drawn:
    """The drawing job of `LatentInterpolation` (runs in the drawing process).

    ends: (P, 2, H, W[, 3]) uint8, each pair's two inputs; lines: (P, S, H, W[, 3]) uint8, the decoded points
    (1 - t) mu_a + t mu_b for the S values `t` from 0 to 1; labels, index: each pair's label names and dataset
    indices."""
    pairs, n_steps = lines.shape[:2]
    height, width = lines.shape[2:4]
    row_labels = [f"{a} → {b}" if a or b else "" for a, b in labels]  # "" for unlabelled inputs
    label_w = int(max([font(TEXT_PX, bold=True).getlength(t) for t in row_labels] + [40.0])) + 10
    fixed = 2 * MARGIN + label_w + 2 * END_GAP
    scale = cell_scale(height, width, n_steps + 2, fixed)
    pictures = cells(np.concatenate([ends.reshape(-1, *lines.shape[2:]), lines.reshape(-1, *lines.shape[2:])]), scale)
    cw, ch = pictures[0].size
    line_w = n_steps * cw + (n_steps - 1) * GAP
    sheet_w = max(fixed + line_w + 2 * cw, 560)

    title = f"Interpolations, epoch {epoch}: the straight line between two inputs' means, decoded"
    notes = [f"Each row: an input, then the decoded points (1 - t) mu_a + t mu_b for {n_steps} values of t from 0 to "
             "1 (the two ends are the inputs' means decoded), then the other input."]
    top = Sheet.title_height(title, notes, sheet_w)
    header_h = SMALL_PX + 6
    row_h = ch + 2 * GAP + 4
    sheet = Sheet(sheet_w, top + header_h + pairs * row_h + MARGIN)
    sheet.title(title, notes)

    x_a = MARGIN + label_w
    x_line = x_a + cw + END_GAP
    x_b = x_line + line_w + END_GAP
    sheet.text((x_a + cw / 2, top), "input", SMALL_PX, anchor="ma")
    sheet.text((x_b + cw / 2, top), "input", SMALL_PX, anchor="ma")
    sheet.column_labels([x_line + k * (cw + GAP) + cw / 2 for k in range(n_steps)], top,
                        [f"t={v:.2g}" if 0 < v < 1 else f"t={v:g}" for v in t])
    for p in range(pairs):
        y = top + header_h + p * row_h
        sheet.image.paste(pictures[2 * p], (x_a, y))
        sheet.image.paste(pictures[2 * p + 1], (x_b, y))
        for k in range(n_steps):
            sheet.image.paste(pictures[2 * pairs + p * n_steps + k], (x_line + k * (cw + GAP), y))
        sheet.text((MARGIN, y + ch / 2), row_labels[p], bold=True, anchor="lm")

    shown = "; ".join(f"{a} (index {i}) → {b} (index {j})" for (a, b), (i, j) in zip(labels, index))
    caption = f"Epoch {epoch}: {pairs} pairs, {n_steps} steps each: {shown}"
    return Drawn(pictures=[("interpolations", sheet.save(path), caption)])
