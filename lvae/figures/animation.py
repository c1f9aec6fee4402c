"""The evolution GIF of each picture, made at the end of fit from every epoch's PNG."""

from pathlib import Path

from PIL import Image

from lvae.drawing import Drawn


def animate(folders: dict[str, str], frame_ms: int = 500) -> Drawn:
    """Turn every epoch's PNG in each folder (`name` -> folder) into `<folder>/evolution.gif`: the evolution of
    each picture at the end of fit. A folder with fewer than two epochs gets no GIF."""
    drawn = Drawn()
    for name, folder in folders.items():
        frames = sorted(Path(folder).glob("epoch_*.png"))
        if len(frames) < 2:
            continue
        images = [Image.open(f).convert("RGB") for f in frames]
        size = images[0].size
        # Pillow's default palette search measured 5x slower than the fast octree (0.51 s against 0.11 s for six
        # 800x660 frames), and the GIF came out 6.5x larger; the fast one looks the same for these plots.
        images = [(im if im.size == size else im.resize(size)).quantize(256, method=Image.Quantize.FASTOCTREE)
                  for im in images]
        path = Path(folder) / "evolution.gif"
        images[0].save(path, save_all=True, append_images=images[1:], duration=frame_ms, loop=0)
        drawn.animations.append((name, str(path)))
    return drawn

