"""The evolution GIF of each picture: every epoch's frame is made when its PNG is drawn, while its pixels are in
memory (`save_frame`), and the GIF is put together from them at the end of fit (`animate`)."""

from pathlib import Path
from typing import Callable

from PIL import Image

from lvae.drawing import Drawn

FRAMES = ".frames"  # a picture's folder keeps each epoch's GIF frame here, beside its PNGs


def frame_path(png: "str | Path") -> Path:
    """Where the GIF frame of the PNG `png` (``<folder>/epoch_NNN.png``) is kept: ``<folder>/.frames/epoch_NNN.gif``."""
    png = Path(png)
    return png.parent / FRAMES / png.with_suffix(".gif").name


def quantize(image: Image.Image) -> Image.Image:
    """`image` in a palette of 256 colours, as a GIF frame holds it."""
    # The fast octree: quicker than Pillow's default palette search and a smaller GIF that looks the same here.
    return image.convert("RGB").quantize(256, method=Image.Quantize.FASTOCTREE)


def save_frame(image: Image.Image, png: "str | Path") -> None:
    """Write the GIF frame of the picture `image`, whose PNG `png` was just written, whole or not at all (a frame
    older than its PNG is not used). Made in the drawing process with each picture, so that the end of fit need not
    decode and quantize every epoch's PNG with the user waiting."""
    path = frame_path(png)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp.gif")
    quantize(image).save(tmp, format="GIF")
    tmp.replace(path)


def _frame(png: Path, size: tuple[int, int]) -> Image.Image:
    """The frame of `png` on a white canvas of `size`, the picture at its top left: the one saved with it, else (a
    run folder written before frames were kept) quantized from the PNG."""
    frame = frame_path(png)
    fresh = frame.is_file() and frame.stat().st_mtime >= png.stat().st_mtime
    # Closed here: a GIF frame keeps its file open after loading (it might hold more frames), one open file per
    # epoch and picture until the garbage collector found it.
    with Image.open(frame if fresh else png) as image:
        if image.size != size:  # a picture whose size changed (traversals: the rows of the active dimensions)
            canvas = Image.new("RGB", size, "white")
            canvas.paste(image.convert("RGB"), (0, 0))
            return quantize(canvas)
        return image.copy() if fresh else quantize(image)


def animate(folders: dict[str, str], frame_ms: int = 500) -> Drawn:
    """Put every epoch's frame in each folder (`name` -> folder) together as `<folder>/evolution.gif`: the
    evolution of each picture at the end of fit, as large as the largest epoch's picture. A folder with fewer
    than two epochs gets no GIF."""
    drawn = Drawn()
    for name, folder in folders.items():
        pngs = sorted(Path(folder).glob("epoch_*.png"))
        if len(pngs) < 2:
            continue
        sizes = []
        for png in pngs:
            with Image.open(png) as image:  # reads the header only
                sizes.append(image.size)
        size = (max(w for w, _ in sizes), max(h for _, h in sizes))
        images = [_frame(png, size) for png in pngs]
        path = Path(folder) / "evolution.gif"
        images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
        drawn.animations.append((name, str(path)))
    return drawn


def draw_then_animate(job: Callable[[], Drawn], folders: dict[str, str]) -> Drawn:
    """Draw a fit's last picture (`job`), then put its evolution GIFs together (`animate` of `folders`), in the
    process that drew it: at the end of fit each GIF is made beside the other pictures being drawn, not after all of
    them in the training process. A GIF that fails is a warning; the picture is still handed back."""
    drawn = job()
    try:
        made = animate(folders)
    except Exception as err:  # a full disk: the picture was drawn, only its evolution is missing
        drawn.warnings.append(f"no evolution GIF ({type(err).__name__}: {err})")
    else:
        drawn.animations.extend(made.animations)
        drawn.warnings.extend(made.warnings)
    drawn.animated = True
    return drawn
