"""What the pictures of decoded images share (traversals, interpolations, reconstructions): images scaled to a
legible cell size, text, and the PNG. Drawn with PIL alone: a matplotlib figure costs axes and text whatever it
holds, and these pictures are only images and words."""

import functools
import math
from typing import Iterable, Sequence

import numpy as np
from matplotlib.font_manager import FontProperties, findfont
from PIL import Image, ImageDraw, ImageFont

from lvae.figures.canvas import save_png

CELL_PX = 64  # an image's longer side is scaled towards this: MNIST's 28 px to 56 px
MAX_WIDTH = 1800  # pixels; wider pictures get smaller cells
MARGIN = 10
GAP = 2  # between the cells of a row
TEXT_PX = 13
SMALL_PX = 11
TITLE_PX = 15


@functools.lru_cache(maxsize=None)
def font(pixels: float, bold: bool = False) -> ImageFont.FreeTypeFont:
    """matplotlib's font (the other pictures' font) at `pixels` pixels; loaded once per size."""
    return ImageFont.truetype(findfont(FontProperties(weight="bold" if bold else "normal")), max(1, round(pixels)))


def cell_scale(height: int, width: int, columns: int, fixed: int) -> float:
    """How much to scale images of `height` x `width`: towards CELL_PX, in whole pixels where they grow (sharp
    digits), and so that `columns` cells plus `fixed` pixels of the rest stay within MAX_WIDTH."""
    scale = min(CELL_PX / max(height, width), (MAX_WIDTH - fixed) / (columns * (width + GAP)))
    return float(math.floor(scale)) if scale >= 1 else scale


def cells(images: np.ndarray, scale: float) -> list[Image.Image]:
    """Images (N, H, W) grey or (N, H, W, 3) colour, uint8, as RGB pictures scaled by `scale`."""
    height, width = images.shape[1:3]
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    resample = Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.BOX
    return [Image.fromarray(image).convert("RGB").resize(size, resample) for image in images]


def wrap(text: str, face: ImageFont.FreeTypeFont, width: int) -> list[str]:
    """`text` broken into lines no wider than `width` pixels, at spaces."""
    lines: list[str] = []
    for word in text.split(" "):
        if lines and face.getlength(f"{lines[-1]} {word}") <= width:
            lines[-1] = f"{lines[-1]} {word}"
        else:
            lines.append(word)
    return lines


def shorten(text: str, face: ImageFont.FreeTypeFont, width: float) -> str:
    """`text`, cut with an ellipsis where it is wider than `width` pixels."""
    if face.getlength(text) <= width:
        return text
    while text and face.getlength(text + "…") > width:
        text = text[:-1]
    return text + "…"


class Sheet:
    """A white picture being laid out from the top: a title block, then whatever the figure places below it."""

    def __init__(self, width: int, height: int):
        self.image = Image.new("RGB", (int(width), int(height)), "white")
        self.draw = ImageDraw.Draw(self.image)

    @staticmethod
    def title_height(title: str, notes: Sequence[str], width: int) -> int:
        lines = len(wrap(title, font(TITLE_PX, bold=True), width - 2 * MARGIN))
        lines_small = sum(len(wrap(note, font(TEXT_PX), width - 2 * MARGIN)) for note in notes)
        return MARGIN + lines * (TITLE_PX + 4) + lines_small * (TEXT_PX + 4) + 6

    def title(self, title: str, notes: Iterable[str]) -> None:
        """The bold title and the notes under it, wrapped to the picture's width."""
        y = MARGIN
        for text, face, px in [(title, font(TITLE_PX, bold=True), TITLE_PX)] + [(n, font(TEXT_PX), TEXT_PX)
                                                                                for n in notes]:
            for line in wrap(text, face, self.image.width - 2 * MARGIN):
                self.draw.text((MARGIN, y), line, fill="black", font=face)
                y += px + 4

    def text(self, xy: tuple[float, float], text: str, pixels: float = TEXT_PX, bold: bool = False,
             anchor: str = "la", fill: str = "black") -> None:
        self.draw.text(xy, text, fill=fill, font=font(pixels, bold), anchor=anchor)

    def column_labels(self, centres: Sequence[float], y: float, labels: Sequence[str], pixels: float = SMALL_PX
                      ) -> None:
        """Labels centred over columns, every other one left out where neighbours would touch."""
        face = font(pixels)
        room = min(np.diff(centres)) if len(centres) > 1 else float("inf")
        widest = max(face.getlength(label) for label in labels)
        shown = list(range(0, len(labels), 1 if widest + 4 <= room else 2))
        shown[-1] = len(labels) - 1  # the last column is always labelled
        for i in shown:
            self.draw.text((centres[i], y), labels[i], fill="black", font=face, anchor="ma")

    def save(self, path: str) -> str:
        """Write the PNG `path` whole or not at all, and its frame of the evolution GIF."""
        return save_png(self.image, path)
