"""`LatentTraversal`'s figure: for a few inputs, one row per latent dimension, most informative first, in which that
dimension of the input's mean moves across N(0, 1) while the others are held."""

import numpy as np

from lvae.drawing import Drawn
from lvae.figures.tiles import GAP, MARGIN, SMALL_PX, TEXT_PX, Sheet, cell_scale, cells, font, shorten

BLOCK_GAP = 18  # between the blocks of two inputs
MARK = 7  # room under a row for the mark of the input's own mean
MARK_COLOUR = (255, 127, 14)  # matplotlib's tab:orange


def _dims(dims: list[int]) -> str:
    return ", ".join(f"z_{d}" for d in dims)


def draw(path: str, epoch: int, inputs: np.ndarray, means: np.ndarray, labels: list[str], index: list[int],
         steps: np.ndarray, values: np.ndarray, dims: list[int], kl: np.ndarray, positions: np.ndarray,
         inactive: list[int], beyond: list[int]) -> Drawn:
    """The drawing job of `LatentTraversal` (runs in the drawing process).

    inputs, means: (n, H, W[, 3]) uint8, the inputs and their means decoded; labels, index: each input's label name
    and dataset index; steps: (n, D, S, H, W[, 3]) uint8, the traversals of the D dimensions `dims` (most KL first)
    over the S z `values`; kl: (Z,) KL per dimension, nats; positions: (n, D) each input's mean in those dimensions;
    inactive: the inactive dimensions left out; beyond: active ones left out past the row limit."""
    n, n_dims, n_steps = len(inputs), len(dims), len(values)
    height, width = inputs.shape[1:3]
    row_labels = [f"z_{d}  KL {kl[d]:.3g}" for d in dims]
    label_w = int(max([font(TEXT_PX, bold=True).getlength(t) for t in row_labels] + [40.0])) + 10
    fixed = 2 * MARGIN + label_w + (n - 1) * BLOCK_GAP
    scale = cell_scale(height, width, n * n_steps, fixed)
    pictures = cells(np.concatenate([inputs, means, steps.reshape(-1, *inputs.shape[1:])]), scale)
    cw, ch = pictures[0].size
    block_w = n_steps * cw + (n_steps - 1) * GAP
    sheet_w = max(fixed + n * block_w, 640)

    title = f"Latent traversals, epoch {epoch}: {kl.size - len(inactive)} of {kl.size} dimensions active"
    span = f"{values[0]:g} ... {values[-1]:+g}"
    # A mean beyond the traversed values is marked hollow at the row's end: named here, with its value.
    beyond_span = [f"index {index[i]}: z_{d} = {positions[i, j]:+.2f}"
                   for i in range(n) for j, d in enumerate(dims) if not values[0] <= positions[i, j] <= values[-1]]
    marks = (f"Under each row, a filled orange triangle marks where the input's own mean lies in that dimension; a "
             f"hollow one at the row's end, a mean outside {span}")
    marks += f" ({'; '.join(beyond_span)})." if beyond_span else " (none here)."
    notes = [f"Each row sets one dimension of an input's mean to z = {span} (N(0, 1) units), the others held, and "
             "decodes. Rows by KL(q(z_d|x) || N(0, 1)), most informative first. Above each block: the input and its "
             "mean decoded.", marks]
    if inactive:
        notes.append(f"Left out: {len(inactive)} inactive dimension{'s' * (len(inactive) > 1)} (means vary across "
                     f"inputs by less than 0.01): {_dims(inactive)}.")
    if beyond:
        notes.append(f"Left out past the row limit: {len(beyond)} more active: {_dims(beyond)}.")
    if not dims:
        notes.append("No dimension is active: the posterior has collapsed onto the prior.")
    top = Sheet.title_height(title, notes, sheet_w)
    header_h = ch + 8 + SMALL_PX + 6  # the input and its mean, then the z values
    row_h = ch + MARK + 2
    sheet = Sheet(sheet_w, top + header_h + n_dims * row_h + MARGIN)
    sheet.title(title, notes)

    for i in range(n):
        x0 = MARGIN + label_w + i * (block_w + BLOCK_GAP)
        sheet.image.paste(pictures[i], (x0, top))
        sheet.image.paste(pictures[n + i], (x0 + cw + GAP, top))
        text_x, room = x0 + 2 * (cw + GAP) + 4, block_w - 2 * (cw + GAP) - 4
        sheet.text((text_x, top), shorten(labels[i], font(TEXT_PX, bold=True), room), bold=True)
        sheet.text((text_x, top + TEXT_PX + 4), shorten(f"index {index[i]}", font(SMALL_PX), room), SMALL_PX)
        centres = [x0 + k * (cw + GAP) + cw / 2 for k in range(n_steps)]
        sheet.column_labels(centres, top + ch + 6, [f"{v:+.2g}" if v else "0" for v in values])
        for j in range(n_dims):
            y = top + header_h + j * row_h
            for k in range(n_steps):
                sheet.image.paste(pictures[2 * n + (i * n_dims + j) * n_steps + k], (x0 + k * (cw + GAP), y))
            # the column where the input's own mean lies, between the columns it falls between
            at = (positions[i, j] - values[0]) / (values[-1] - values[0]) * (n_steps - 1)
            x = x0 + float(np.clip(at, 0, n_steps - 1)) * (cw + GAP) + cw / 2
            corners = [(x - 5, y + ch + MARK), (x + 5, y + ch + MARK), (x, y + ch + 1)]
            inside = 0 <= at <= n_steps - 1
            sheet.draw.polygon(corners, fill=MARK_COLOUR if inside else None, outline=MARK_COLOUR, width=1 if inside
                               else 2)  # a hollow mark drawn thin is lost
    for j, text in enumerate(row_labels):
        sheet.text((MARGIN, top + header_h + j * row_h + ch / 2), text, bold=True, anchor="lm")

    rows = "; ".join(f"z_{d} {kl[d]:.3g}" for d in dims) or "none active"
    shown = ", ".join(f"{label} (index {i})" for label, i in zip(labels, index))
    caption = f"Epoch {epoch}: rows by KL (nats): {rows}. Inputs: {shown}. " + " ".join(notes[1:])
    return Drawn(pictures=[("traversals", sheet.save(path), caption.strip())])
