"""`LatentExplorer`'s job: keep each drawn epoch's points on disk and (re)write the run's explorer page from all of
them, one self-contained HTML file (Bokeh, its scripts inline) that replays the latent space epoch by epoch.

What is kept, under ``latents/explorer/`` of the run (plain arrays, read back without pickle):

- ``inputs.npz``: each followed input once: dataset ``index`` (N,), ``label`` (N,), ``images`` (N thumbnails of at
  most 32 px, as the page holds them: `encode`), the class ``names`` (text) and whether the inputs are ``labelled``;
- ``epoch_NNN.npz``: per drawn epoch, its inputs' ``index`` (n,), their places in the PCA view (``pca`` (n, 2), the
  ``axes`` names and the ``view`` it is), u(x) and the negative ELBO (``u``, ``neg_elbo`` (n,), NaN where the module
  has none), the decoded ``prior_images`` of the prior draws, and ``tsne_map``: where, under ``latents/``,
  `TSNEEmbedding` keeps its map of the epoch (``tsne/map_NNN.npz``: the inputs' places and, where it holds them, the
  prior draws'; "" without a t-SNE map). The map is read when the page is written: it is made beside the page's
  epoch, maybe in another drawing process, and may be done only by the next page.

`lvae explore runs/<id>` writes the page again from these (`write_page`).
"""

import base64
import io
import os
from pathlib import Path
from typing import Any, Optional, Sequence

import numpy as np
from bokeh.core.properties import value
from bokeh.embed import file_html
from bokeh.layouts import column, row
from bokeh.models import (CDSView, ColumnDataSource, CustomJS, CustomJSTickFormatter, Div, HoverTool, IndexFilter,
                          Legend, LegendItem, Range1d, Scatter, Slider, TapTool, Toggle)
from bokeh.palettes import Category10_10
from bokeh.plotting import figure
from bokeh.resources import INLINE
from PIL import Image

from lvae.drawing import Drawn

PAGE = "explorer.html"  # beside the pictures' folders, in latents/
KEPT = "explorer"  # the folder of kept data, in latents/
INPUTS = "inputs.npz"
PLOT_PX = (600, 560)  # width, height of each view
PLAY_MS = 700  # an epoch's time on screen while playing
TOOLS = "pan,wheel_zoom,box_zoom,reset,save"
COLUMNS = ("pca_x", "pca_y", "tsne_x", "tsne_y", "u", "nelbo")  # what changes with the epoch, per input

# The page's own JavaScript, all of it. Bokeh draws, shows the hover cards and keeps one selection for both views
# (they share one data source); what it does not do is here: an epoch's data into view, playing, the ring on the
# hovered input in both views, the paths of selected inputs, and the classes the legend hides taken out of the rows
# both views draw (and hover and tap).
SHOW_EPOCH = """
const k = slider.value
const part = (values, width) => values.slice(k * width, (k + 1) * width)
const shown = {...points.data}
for (const name of columns) shown[name] = part(history.data[name], n)
points.data = shown
prior.data = {...prior.data, x: part(prior_history.data.x, p), y: part(prior_history.data.y, p),
              img: part(prior_history.data.img, p)}
for (const [model, texts] of titles) model.text = texts[k]
for (const [axis, labels] of axis_labels) axis.axis_label = labels[k]
ranges.forEach((range, axis) => {
    const [start, end] = frames[k].slice(2 * axis, 2 * axis + 2)
    range.setv({start, end, reset_start: start, reset_end: end})
})
ring.data = {index: [], pca_x: [], pca_y: [], tsne_x: [], tsne_y: []}
"""
PLAY = """
if (!toggle.active) {
    clearInterval(toggle.timer)
    toggle.label = "\\u25b6 play"
    return
}
toggle.label = "\\u275a\\u275a pause"
if (slider.value >= slider.end) slider.value = slider.start
toggle.timer = setInterval(() => {
    if (slider.value >= slider.end) toggle.active = false
    else slider.value = slider.value + 1
}, ms)
"""
RING = """
const [i] = cb_data.index.indices
if (ring.data.index[0] === i) return  // a new ring repaints, and a repaint inspects again
const at = (name) => i === undefined ? [] : [points.data[name][i]]
ring.data = {index: at("index"), pca_x: at("pca_x"), pca_y: at("pca_y"), tsne_x: at("tsne_x"), tsne_y: at("tsne_y")}
"""
PATHS = """
const e = history.data.pca_x.length / n
const lines = {pca_x: [], pca_y: [], tsne_x: [], tsne_y: [], colour: []}
const dots = {pca_x: [], pca_y: [], tsne_x: [], tsne_y: [], colour: [], fill: []}
for (const i of points.selected.indices) {
    for (const name of ["pca_x", "pca_y", "tsne_x", "tsne_y"]) {
        const path = Array.from({length: e}, (_, k) => history.data[name][k * n + i])
        lines[name].push(path)
        dots[name].push(...path)
    }
    lines.colour.push(points.data.colour[i])
    dots.colour.push(...Array(e).fill(points.data.colour[i]))
    dots.fill.push(points.data.colour[i], ...Array(e - 1).fill("white"))  // filled: where the path starts
}
paths.data = lines
path_dots.data = dots
"""
SHOWN_ROWS = """
const rows = []
for (const [renderer, members] of classes) if (renderer.visible) rows.push(...members)
shown.indices = rows.sort((a, b) => a - b)
"""
HELP = ("Drag the epoch slider, or press play, to replay training in both views. Hover a point for its input, "
        "label, dataset index, u(x) (the mean posterior variance) and negative ELBO at that epoch; the same input "
        "is ringed in the other view. Click a point for its path across the epochs, a dot for each, filled where it "
        "starts (shift-click for more, click empty space to clear). Click a class in the legend to hide or show it. Crosses in the t-SNE map are the "
        "prior draws z ~ N(0, I): hover one for its decoded image at that epoch. The tools beside each view pan, "
        "zoom and reset it.")


def record(folder: str, epoch: int, index: np.ndarray, pca: np.ndarray, axes: Sequence[str], view: str,
           u: np.ndarray, neg_elbo: np.ndarray, tsne_map: str, prior_images: np.ndarray,
           inputs: Optional[dict[str, Any]], write: bool = True) -> Drawn:
    """The job of `LatentExplorer` (runs in the drawing process): keep epoch `epoch` in `folder` (its arrays are
    those of `keep_epoch`) and the `inputs` sent with it (`keep_inputs`; sent the first time, and when they change),
    then, with `write`, write the page again from every kept epoch and hand back which epochs it shows t-SNE maps of
    (without: the epoch is kept for a later page)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    if inputs is not None:
        keep_inputs(folder, **inputs)
    keep_epoch(folder, epoch, index, pca, axes, view, u, neg_elbo, tsne_map, prior_images)
    return Drawn(state={"mapped": write_page(folder.parent / PAGE)}) if write else Drawn()


def rewrite(page: str) -> Drawn:
    """A job that writes the page `page` again (a t-SNE map came after it was written)."""
    return Drawn(state={"mapped": write_page(Path(page))})


def keep_epoch(folder: Path, epoch: int, index: np.ndarray, pca: np.ndarray, axes: Sequence[str], view: str,
               u: np.ndarray, neg_elbo: np.ndarray, tsne_map: str, prior_images: np.ndarray) -> None:
    """Keep epoch `epoch` of the inputs `index` (n,) as ``epoch_NNN.npz`` in `folder`: their places `pca` (n, 2) in
    the view `view` (its axes named `axes`), u(x) and negative ELBO `u`, `neg_elbo` (n,); the path of the epoch's
    t-SNE map under ``latents/`` ("" for none); the decoded prior draws `prior_images` (P, h, w[, 3]) uint8."""
    _save(folder / f"epoch_{epoch:03d}.npz", epoch=epoch, index=index, pca=pca.astype(np.float32),
          axes=np.array(axes, dtype=str), view=np.array(view), u=u.astype(np.float32),
          neg_elbo=neg_elbo.astype(np.float32), tsne_map=np.array(tsne_map), prior_images=encode(prior_images))


def _with_map(epoch: dict[str, np.ndarray], latents: Path) -> dict[str, np.ndarray]:
    """A kept `epoch` with its inputs' and prior draws' places in its t-SNE map, read from the map file under
    `latents`: ``tsne`` (n, 2) and ``prior`` (P, 2), NaN where the map has none, and ``tsne_note``, why there is no
    map."""
    number, n, p = int(epoch["epoch"]), len(epoch["index"]), len(decode(epoch["prior_images"]))
    tsne, prior = np.full((n, 2), np.nan, np.float32), np.full((p, 2), np.nan, np.float32)
    note = "no t-SNE map: TSNEEmbedding is not among the trainer's callbacks"
    if str(epoch["tsne_map"]):
        note = f"no t-SNE map of epoch {number} (yet: it is drawn beside this page, or was skipped)"
        try:
            with np.load(latents / str(epoch["tsne_map"]), allow_pickle=False) as saved:
                mapped, places = saved["index"], saved["embedding"]
                if "prior" in saved.files and len(saved["prior"]) == p:
                    prior[:] = saved["prior"]
            note = ""
        except (OSError, KeyError, ValueError):
            pass  # not made yet, or skipped: the page says so
        else:
            order = np.argsort(mapped)
            rows = np.clip(np.searchsorted(mapped[order], epoch["index"]), 0, len(mapped) - 1)
            found = mapped[order][rows] == epoch["index"]
            tsne[found] = places[order][rows[found]]
    return {**epoch, "tsne": tsne, "prior": prior, "tsne_note": np.array(note)}


def keep_inputs(folder: Path, index: np.ndarray, label: np.ndarray, images: np.ndarray, names: Sequence[str],
                labelled: bool) -> None:
    """Keep the inputs `index` (n,) with their `label` (n,) and `images` (n, h, w[, 3]) uint8, merged with those
    kept before (a resumed run, or inputs that changed), each input once."""
    path, urls = folder / INPUTS, data_urls(images)
    if path.is_file():
        with np.load(path, allow_pickle=False) as kept:
            old = ~np.isin(kept["index"], index)
            index = np.concatenate([kept["index"][old], index])
            label = np.concatenate([kept["label"][old], label])
            urls = [url for url, keep in zip(decode(kept["images"]), old) if keep] + urls
    order = np.argsort(index)
    _save(path, index=index[order], label=label[order], images=_joined([urls[i] for i in order]),
          names=np.array(list(names), dtype=str), labelled=np.array(bool(labelled)))


def encode(images: np.ndarray) -> np.ndarray:
    """`images` (N, h, w[, 3]) uint8 as the page holds them: data URLs (`data_urls`), kept as one uint8 array of
    their text, one a line. Encoded once, when kept, not again for every page written."""
    return _joined(data_urls(images))


def _joined(urls: list[str]) -> np.ndarray:
    return np.frombuffer("\n".join(urls).encode("ascii"), dtype=np.uint8)


def decode(kept: np.ndarray) -> list[str]:
    """The data URLs of images kept by `encode`."""
    return kept.tobytes().decode("ascii").split("\n") if len(kept) else []


def _save(path: Path, **arrays: Any) -> None:
    """Write `arrays` as the .npz `path`, whole or not at all."""
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as file:
        np.savez(file, **arrays)
    os.replace(tmp, path)


def kept_epochs(folder: Path) -> list[Path]:
    """The kept epochs' files in `folder`, in epoch order."""
    return sorted(folder.glob("epoch_*.npz"))


def write_page(page: Path) -> list[int]:
    """Write the explorer page `page` (``latents/explorer.html``) from the data kept beside it and the t-SNE maps,
    whole or not at all: written beside itself, then renamed into place, so a browser never opens half a page.
    Returns the epochs whose t-SNE map it shows."""
    folder = page.parent / KEPT
    with np.load(folder / INPUTS, allow_pickle=False) as kept:
        inputs = {key: kept[key] for key in kept.files}
    epochs = []
    for path in kept_epochs(folder):
        with np.load(path, allow_pickle=False) as kept:
            epochs.append(_with_map({key: kept[key] for key in kept.files}, page.parent))
    run = page.parent.parent.name
    html = file_html(layout(inputs, epochs, run), INLINE, title=f"{run}: latent explorer, {_epoch_span(epochs)}")
    tmp = page.with_name(f".{page.name}.{os.getpid()}.tmp")
    try:
        tmp.write_text(html, encoding="utf-8")
        os.replace(tmp, page)
    except OSError as err:  # a full disk: no half-written page left taking the space, and the error names the page
        tmp.unlink(missing_ok=True)
        raise OSError(err.errno, err.strerror or str(err), str(page)) from None
    return [int(epoch["epoch"]) for epoch in epochs if not str(epoch["tsne_note"])]


def _epoch_span(epochs: list[dict[str, np.ndarray]]) -> str:
    """The epochs on the page, as its title says them: "epoch 0", "epochs 0 to 9", "6 epochs from 0 to 9"."""
    numbers = [int(e["epoch"]) for e in epochs]
    if len(numbers) == 1:
        return f"epoch {numbers[0]}"
    every = len(numbers) == numbers[-1] - numbers[0] + 1
    return f"{'' if every else f'{len(numbers)} '}epochs {'' if every else 'from '}{numbers[0]} to {numbers[-1]}"


def data_urls(images: np.ndarray) -> list[str]:
    """Each picture of `images` as a ``data:`` URL: a PNG for grey (N, h, w), a JPEG for colour (N, h, w, 3) uint8.
    A 32 px colour photo takes 2.0 kB as PNG and 0.54 kB as JPEG (grey digits: 0.27 kB as PNG, 0.45 kB as JPEG),
    which keeps the page of 2,000 colour inputs under 10 MB."""
    kind, options = ("png", {}) if images.ndim == 3 else ("jpeg", {"quality": 85, "optimize": True})
    urls = []
    for image in images:
        buffer = io.BytesIO()
        Image.fromarray(image).save(buffer, format=kind, **options)
        urls.append(f"data:image/{kind};base64," + base64.b64encode(buffer.getvalue()).decode("ascii"))
    return urls


def _by_input(index: np.ndarray, epochs: list[dict[str, np.ndarray]], key: str) -> np.ndarray:
    """Epoch by epoch, `key` of every kept input `index` (N,): (E, N, ...) float32, NaN where an epoch did not follow
    that input."""
    values = np.full((len(epochs), len(index), *epochs[0][key].shape[1:]), np.nan, np.float32)
    for k, epoch in enumerate(epochs):
        rows = np.clip(np.searchsorted(index, epoch["index"]), 0, len(index) - 1)
        found = index[rows] == epoch["index"]
        values[k, rows[found]] = epoch[key][found]
    return values


def _prior(epochs: list[dict[str, np.ndarray]]) -> tuple[np.ndarray, list[str]]:
    """The prior draws' places in each epoch's map, (E, P, 2) float32, and their decoded images as data URLs, E x P
    in epoch order ("" and NaN where an epoch had fewer draws)."""
    p = max(len(epoch["prior"]) for epoch in epochs)
    places, images = np.full((len(epochs), p, 2), np.nan, np.float32), []
    for k, epoch in enumerate(epochs):
        places[k, :len(epoch["prior"])] = epoch["prior"]
        urls = decode(epoch["prior_images"])
        images += urls + [""] * (p - len(urls))
    return places, images


def _span(values: np.ndarray, pad: float = 0.05) -> Optional[tuple[float, float]]:
    """The range of every finite value of `values`, with a margin; None where none is finite."""
    finite = values[np.isfinite(values)]
    if not len(finite):
        return None
    low, high = float(finite.min()), float(finite.max())
    margin = pad * max(high - low, 1e-6)
    return low - margin, high + margin


def _frames(places: np.ndarray) -> list[tuple[float, float, float, float]]:
    """Per epoch, a frame (x0, x1, y0, y1) around its places (E, M, 2); an epoch with none keeps the frame before it
    (the first epochs, the first frame there is)."""
    frames, last = [], None
    for epoch in places:
        x, y = _span(epoch[:, 0]), _span(epoch[:, 1])
        if x is not None:
            last = (*x, *y)
        frames.append(last)
    first = next((frame for frame in frames if frame is not None), (-1.0, 1.0, -1.0, 1.0))
    return [frame or first for frame in frames]


def _range(values: np.ndarray) -> Range1d:
    """A view's range over `values`: (-1, 1) where none is finite."""
    return Range1d(*(_span(values) or (-1.0, 1.0)))


def _card(text: list[str]) -> str:
    """A hover card: the image of column ``img`` beside lines of `text`. Bokeh escapes each ``@column`` it fills in,
    so a class name or any other value shows as text, never as markup."""
    return ('<div style="display:flex;align-items:center;gap:8px">'
            '<img src="@img" style="width:64px;image-rendering:pixelated;border:1px solid #bbb;flex:none">'
            f'<div style="font-size:12px;line-height:1.4">{"".join(f"<div>{line}</div>" for line in text)}</div></div>')


def _titles(epoch: dict[str, np.ndarray], n: int) -> tuple[str, str]:
    """The titles of the two views at `epoch`, whose inputs are `n` in all."""
    number = int(epoch["epoch"])
    mapped = int(np.isfinite(epoch["tsne"][:, 0]).sum())
    share = "" if mapped == n else f" ({mapped} of the {n} inputs)"
    tsne = f"t-SNE map of the means{share}, epoch {number}" if mapped else str(epoch["tsne_note"])
    return f"{epoch['view']}, epoch {number}", tsne


def layout(inputs: dict[str, np.ndarray], epochs: list[dict[str, np.ndarray]], run: str) -> Any:
    """The page of `inputs` and kept `epochs` (as `write_page` reads them) of the run `run`: the PCA view and the
    t-SNE map side by side, an epoch slider and a play button under them; it opens at the last epoch."""
    index, labels, labelled = inputs["index"], inputs["label"], bool(inputs["labelled"])
    names = [str(name) for name in inputs["names"]]
    n, last = len(index), len(epochs) - 1
    places = {"pca": _by_input(index, epochs, "pca"), "tsne": _by_input(index, epochs, "tsne")}  # (E, N, 2) each
    elbo = _by_input(index, epochs, "neg_elbo")  # (E, N)
    prior_xy, prior_img = _prior(epochs)  # (E, P, 2), E * P
    p = prior_xy.shape[1]
    history = ColumnDataSource({"pca_x": places["pca"][..., 0].ravel(), "pca_y": places["pca"][..., 1].ravel(),
                                "tsne_x": places["tsne"][..., 0].ravel(), "tsne_y": places["tsne"][..., 1].ravel(),
                                "u": _by_input(index, epochs, "u").ravel(), "nelbo": elbo.ravel()})  # (E * N,)
    label_text = [names[c] if 0 <= c < len(names) else str(c) for c in labels.tolist()]  # -1: unlabelled, not the last
    # Category10 is matplotlib's tab10: a class has the colour it has in every lvae picture.
    colours = [Category10_10[c % 10] for c in labels.tolist()] if labelled else [Category10_10[0]] * n
    points = ColumnDataSource({**{name: history.data[name][last * n:(last + 1) * n] for name in COLUMNS},
                               "index": index, "label": label_text, "colour": colours,
                               "img": decode(inputs["images"])}, name="points")
    prior_history = ColumnDataSource({"x": prior_xy[..., 0].ravel(), "y": prior_xy[..., 1].ravel(), "img": prior_img})
    prior = ColumnDataSource({"x": prior_xy[last, :, 0], "y": prior_xy[last, :, 1],
                              "img": prior_img[last * p:(last + 1) * p], "draw": list(range(p))}, name="prior")
    ring = ColumnDataSource({name: [] for name in ("index", "pca_x", "pca_y", "tsne_x", "tsne_y")}, name="ring")
    paths = ColumnDataSource({name: [] for name in ("pca_x", "pca_y", "tsne_x", "tsne_y", "colour")}, name="paths")
    path_dots = ColumnDataSource({**paths.data, "fill": []})
    text = [_titles(epoch, n) for epoch in epochs]

    # The PCA view keeps one frame, all epochs' (LatentScatter's limits only widen, to the same); the t-SNE map is
    # framed epoch by epoch, as its PNGs are: a cold first map spreads twice as wide as the warm ones after it.
    frames = _frames(np.concatenate([places["tsne"], prior_xy], axis=1))  # (E, N + P, 2) -> E frames
    width, height = PLOT_PX
    size = float(np.clip(180 / np.sqrt(n), 4, 12))  # fewer points, larger dots
    pca_view = figure(name="pca", width=width, height=height, tools=TOOLS, title=text[last][0],
                      x_range=_range(places["pca"][..., 0]), y_range=_range(places["pca"][..., 1]),
                      x_axis_label=str(epochs[last]["axes"][0]), y_axis_label=str(epochs[last]["axes"][1]))
    views = {"pca": pca_view}
    if np.isfinite(places["tsne"]).any():
        views["tsne"] = figure(name="tsne", width=width, height=height, tools=TOOLS, title=text[last][1],
                               x_range=Range1d(*frames[last][:2]), y_range=Range1d(*frames[last][2:]))
        views["tsne"].axis.visible = views["tsne"].grid.visible = False  # a t-SNE map's axes mean nothing

    # Each view draws the inputs of the classes shown with one renderer (its view filters by `shown_rows`), which
    # hover and tap act on, so that a card, a ring and a tap are for one input of a class shown. The legend's entry
    # of a class is a renderer with no point of its own, in the class's colour: the legend hides it, and hiding it
    # takes the class's rows out of `shown_rows` in both views (`SHOWN_ROWS`). One renderer per class and view
    # instead would make the page's models twice as many, and its writing at the end of fit a third slower.
    shown_rows = IndexFilter(list(range(n)), name="shown")
    dots = {key: view.scatter(f"{key}_x", f"{key}_y", source=points, view=CDSView(filter=shown_rows), size=size,
                              fill_color="colour", line_color=None, fill_alpha=0.75, nonselection_fill_alpha=0.25,
                              selection_fill_alpha=1.0, name=f"{key}_dots")
            for key, view in views.items()}
    beside = list(views.values())[-1]  # the view the legend sits beside
    items = []
    if labelled:
        no_data = ColumnDataSource({"x": [np.nan], "y": [np.nan]})  # a point not drawn, for the legend's swatch
        classes = []
        for c in np.unique(labels).tolist():
            members = np.flatnonzero(labels == c).tolist()
            swatch = beside.add_glyph(no_data, Scatter(x="x", y="y", size=size, fill_color=colours[members[0]],
                                                        line_color=None, fill_alpha=0.75))
            classes.append((swatch, members))
            items.append(LegendItem(label=value(label_text[members[0]]), renderers=[swatch]))
        refilter = CustomJS(args={"classes": classes, "shown": shown_rows}, code=SHOWN_ROWS)
        for swatch, _ in classes:
            swatch.js_on_change("visible", refilter)
    elbo_line = ["negative ELBO @nelbo{0.0} nats"] if np.isfinite(elbo).any() else []
    card = _card((["<b>@label</b>"] if labelled else []) + ["dataset index @index", "u(x) @u{0.0000}", *elbo_line])
    for key, view in views.items():
        view.multi_line(f"{key}_x", f"{key}_y", source=paths, line_color="colour", line_width=2, line_alpha=0.8)
        view.scatter(f"{key}_x", f"{key}_y", source=path_dots, size=6, fill_color="fill", line_color="colour",
                     line_width=1.5)
        view.scatter(f"{key}_x", f"{key}_y", source=ring, size=size + 10, fill_color=None, line_color="black",
                     line_width=2.5)
        view.add_tools(HoverTool(renderers=[dots[key]], tooltips=card, limit=1,
                                 callback=CustomJS(args={"points": points, "ring": ring}, code=RING)),
                       TapTool(renderers=[dots[key]]))
    if "tsne" in views and np.isfinite(prior_xy).any():
        crosses = views["tsne"].scatter("x", "y", source=prior, marker="x", size=10, line_color="black",
                                        line_width=1.5)
        views["tsne"].add_tools(HoverTool(renderers=[crosses], limit=1,
                                          tooltips=_card(["prior draw @draw,", "decoded at this epoch"])))
        items.append(LegendItem(label=value("prior z, decoded"), renderers=[crosses]))
    if items:
        legend = Legend(items=items, title="label" if labelled else None, click_policy="hide")
        beside.add_layout(legend, "right")
        beside.width = width + 160  # the legend's room, beside the view's

    epoch_numbers = [int(epoch["epoch"]) for epoch in epochs]
    slider = Slider(name="epoch", start=0, end=max(last, 1), value=last, step=1, title="epoch", disabled=last == 0,
                    width=2 * width, format=CustomJSTickFormatter(args={"epochs": epoch_numbers},
                                                                  code="return String(epochs[Math.round(tick)])"))
    titles = [(view.title, [t[k] for t in text]) for k, view in enumerate(views.values())]
    slider.js_on_change("value", CustomJS(code=SHOW_EPOCH, args={
        "slider": slider, "points": points, "history": history, "prior": prior, "prior_history": prior_history,
        "ring": ring, "n": n, "p": p, "columns": list(COLUMNS), "titles": titles,
        "axis_labels": [(pca_view.xaxis[0], [str(e["axes"][0]) for e in epochs]),
                        (pca_view.yaxis[0], [str(e["axes"][1]) for e in epochs])],
        "frames": frames, "ranges": [views["tsne"].x_range, views["tsne"].y_range] if "tsne" in views else []}))
    points.selected.js_on_change("indices", CustomJS(code=PATHS, args={
        "points": points, "history": history, "paths": paths, "path_dots": path_dots, "n": n}))
    play = Toggle(name="play", label="\u25b6 play", width=90, disabled=last == 0)
    play.js_on_change("active", CustomJS(code=PLAY, args={"toggle": play, "slider": slider, "ms": PLAY_MS}))

    header = Div(text=f"{run}: {n} validation inputs, {_epoch_span(epochs)}", render_as_text=True,
                 styles={"font-size": "16px", "font-weight": "bold"})
    notes = [] if "tsne" in views else [Div(text=str(epochs[last]["tsne_note"]), render_as_text=True)]
    return column(header, row(*views.values()), row(play, slider), *notes,
                  Div(text=HELP, render_as_text=True, width=2 * width + 160))
