"""The latent explorer (issue 25): the page built in-process from small arrays and opened from disk in headless
Chromium, as a user opens it; `LatentExplorer` on a plain Trainer with a module written here; `lvae explore`
writing the page again from what a run kept, and refusing a run without it."""

import os
import shutil
import tempfile
import threading
import time
from pathlib import Path

import lightning as L
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from conftest import toy_digits
from interrupts import StopsMidEpoch
from torch import Tensor, nn
from torch.utils.data import DataLoader, TensorDataset

from lvae.callbacks import LatentExplorer, TSNEEmbedding
from lvae.explore import main as explore_main
from lvae.figures.explorer import keep_epoch, keep_inputs, write_page

MARKUP = "<img src=x onerror=alert(1)>"  # a class folder's name, to be shown as these characters
CHROMIUM_FLAGS = ("--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
                  "--disable-component-update", "--disable-sync", "--no-first-run", "--window-size=1500,1000")
N, EPOCHS, PRIOR = 200, 5, 16


def kept_run(root: Path, images: np.ndarray, labels: np.ndarray, names: list[str], labelled: bool = True,
             maps: bool = True) -> Path:
    """A run folder whose explorer kept EPOCHS epochs of `images` (and, with `maps`, whose t-SNE maps are kept as
    TSNEEmbedding keeps them, with the prior draws' places); returns its page, written."""
    latents = root / "latents"
    (latents / "tsne").mkdir(parents=True)
    (latents / "explorer").mkdir()
    n = len(images)
    index = np.arange(n) * 3  # dataset indices are not rows
    keep_inputs(latents / "explorer", index, labels, images, names, labelled)
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(10, 2)) * 4
    for epoch in range(EPOCHS):
        pca = centres[labels % 10] * (epoch + 1) + rng.normal(size=(n, 2))
        tsne_map = ""
        if maps:
            tsne_map = f"tsne/map_{epoch:03d}.npz"
            np.savez(latents / tsne_map, embedding=centres[labels % 10] * 5 + rng.normal(size=(n, 2)), index=index,
                     epoch=epoch, init_epoch=epoch - 1, prior=rng.normal(size=(PRIOR, 2)) * 10)
        keep_epoch(latents / "explorer", epoch, index, pca, ("PC1, 30% of variance", "PC2, 20% of variance"),
                   "PCA of Z=20 to 2-D (50% of variance)", rng.random(n), 100 + rng.random(n), tsne_map,
                   images[epoch:epoch + PRIOR])
    write_page(latents / "explorer.html")
    return latents / "explorer.html"


@pytest.fixture(scope="module")
def browser():
    """One headless Chromium for the module, with a fresh profile, its console and network logged."""
    missing = [name for name in ("chromium", "chromedriver") if shutil.which(name) is None]
    try:
        from selenium import webdriver
    except ImportError:
        missing.append("selenium (pip install -e '.[test]')")
    if missing:
        pytest.skip(f"the explorer's browser tests need {' and '.join(missing)} (Debian: apt-get install chromium "
                    "chromium-driver)")
    from selenium.webdriver.chrome.service import Service

    options = webdriver.ChromeOptions()
    profile = tempfile.mkdtemp(prefix="lvae-chromium-")
    for flag in (*CHROMIUM_FLAGS, f"--user-data-dir={profile}"):
        options.add_argument(flag)
    options.binary_location = shutil.which("chromium")
    options.set_capability("goog:loggingPrefs", {"browser": "ALL", "performance": "ALL"})
    driver = webdriver.Chrome(options=options, service=Service(shutil.which("chromedriver")))
    yield driver
    driver.quit()
    shutil.rmtree(profile, ignore_errors=True)


@pytest.fixture(scope="module")
def digits_page(tmp_path_factory: pytest.TempPathFactory) -> Path:
    images, labels = toy_digits(N, seed=0)
    names = ["zero", MARKUP, *(f"class {c}" for c in range(2, 10))]
    return kept_run(tmp_path_factory.mktemp("digits"), images, labels, names)


def open_page(driver, page: Path) -> float:
    """Open `page` from disk and wait until Bokeh has drawn it; the seconds from navigation to drawn."""
    driver.get("about:blank")
    driver.get_log("browser")  # what an earlier page logged is not this page's
    driver.get_log("performance")
    driver.get(page.as_uri())
    return driver.execute_async_script("""const done = arguments[arguments.length - 1]
        const wait = () => { const doc = window.Bokeh && Bokeh.documents[0]
            if (doc && doc.is_idle) done(performance.now() / 1000); else setTimeout(wait, 10) }
        wait()""")


# Finds Bokeh's views by their models' names, and every element of the page, inside shadow roots too.
VIEWS = """
function* walk(view) { yield view; if (view.children) for (const child of view.children()) yield* walk(child) }
const views = {}
for (const root of Bokeh.index.roots) for (const view of walk(root)) if (view.model.name) views[view.model.name] = view
const model = (name) => Bokeh.documents[0].get_model_by_name(name)
function* elements(root) { for (const el of root.querySelectorAll('*')) { yield el; if (el.shadowRoot) yield* elements(el.shadowRoot) } }
"""


def model_data(driver, name: str) -> dict:
    return driver.execute_script(VIEWS + "const d = model(arguments[0]).data; const out = {}; "
                                 "for (const k in d) out[k] = Array.from(d[k]); return out", name)


def point_on_screen(driver, view: str, row: int, source: str = "points") -> tuple[int, int]:
    """Where row `row` of `source` is drawn in `view` ("pca" or "tsne"), in the window's pixels."""
    x, y = ("x", "y") if source == "prior" else (f"{view}_x", f"{view}_y")
    return tuple(round(v) for v in driver.execute_script(VIEWS + """
        const [view, row, source, x, y] = arguments, v = views[view], box = v.el.getBoundingClientRect()
        const data = model(source).data
        return [box.left + v.frame.x_scale.compute(data[x][row]), box.top + v.frame.y_scale.compute(data[y][row])]
        """, view, row, source, x, y))


def hover(driver, at: tuple[int, int]) -> None:
    from selenium.webdriver.common.actions.action_builder import ActionBuilder

    shown = cards(driver)
    actions = ActionBuilder(driver)
    actions.pointer_action.move_to_location(*at)
    actions.perform()
    until(driver, lambda: cards(driver) and cards(driver) != shown)  # the card of what is under the pointer


def until(driver, condition, seconds: float = 10.0):
    """Wait for the page to show what `condition` looks for (its value once truthy), as a user would."""
    from selenium.webdriver.support.ui import WebDriverWait

    return WebDriverWait(driver, seconds, poll_frequency=0.05).until(lambda _: condition())


def cards(driver) -> list[tuple[str, str]]:
    """The hover cards shown: (their image's src, their text)."""
    return driver.execute_script(VIEWS + """const out = []
        for (const el of elements(document)) if (el.tagName == 'IMG' && el.getBoundingClientRect().width > 0)
            out.push([el.getAttribute('src'), el.parentElement.innerText])
        return out""")


def test_page_opens_offline_without_errors(browser, digits_page: Path) -> None:
    open_page(browser, digits_page)  # how long it takes to draw is bench/explorer_cost.py's, not a test's
    errors = [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert not errors, errors
    # Nothing is fetched but the page itself: no script, style or image from a server.
    resources = browser.execute_script("return performance.getEntriesByType('resource').map(e => e.name)")
    requested = [entry["message"] for entry in browser.get_log("performance")
                 if '"Network.requestWillBeSent"' in entry["message"]]
    assert not [url for url in resources if not url.startswith(("data:", "file:"))], resources
    assert all('"url":"data:' in message or '"url":"file:' in message for message in requested), requested
    size = digits_page.stat().st_size
    assert size < 3e6, f"{size} bytes for {N} inputs and {EPOCHS} epochs"


def test_slider_changes_the_drawn_epoch(browser, digits_page: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains
    from selenium.webdriver.common.keys import Keys

    open_page(browser, digits_page)
    title = "return [" + ", ".join(f"model('{v}').title.text" for v in ("pca", "tsne")) + "]"
    assert browser.execute_script(VIEWS + title)[0].endswith(f"epoch {EPOCHS - 1}")  # opens at the last epoch
    before, pixels = model_data(browser, "points"), browser.get_screenshot_as_png()
    handle = browser.execute_script(VIEWS + "for (const el of elements(document)) "
                                    "if (el.classList.contains('noUi-handle')) return el")
    ActionChains(browser).click(handle).send_keys(Keys.ARROW_LEFT, Keys.ARROW_LEFT).perform()
    until(browser, lambda: browser.execute_script(VIEWS + title)[1].endswith(f"epoch {EPOCHS - 3}"))
    pca_title, tsne_title = browser.execute_script(VIEWS + title)
    assert pca_title.endswith(f"epoch {EPOCHS - 3}") and tsne_title.endswith(f"epoch {EPOCHS - 3}")
    after = model_data(browser, "points")
    assert not np.allclose(before["pca_x"], after["pca_x"]) and not np.allclose(before["tsne_x"], after["tsne_x"])
    assert browser.get_screenshot_as_png() != pixels


def test_hover_shows_the_input_and_rings_it_in_the_other_view(browser, digits_page: Path) -> None:
    open_page(browser, digits_page)
    points = model_data(browser, "points")
    row = 7
    hover(browser, point_on_screen(browser, "pca", row))
    shown = cards(browser)
    assert len(shown) == 1
    src, text = shown[0]
    assert src == points["img"][row] and src.startswith("data:image/png;base64,")
    assert f"dataset index {points['index'][row]}" in text and "u(x)" in text and "negative ELBO" in text
    ring = model_data(browser, "ring")  # drawn in both views
    assert ring["index"] == [points["index"][row]]
    assert ring["tsne_x"] == [points["tsne_x"][row]] and ring["pca_x"] == [points["pca_x"][row]]
    # A prior draw in the map: its decoded image at this epoch.
    prior = model_data(browser, "prior")
    hover(browser, point_on_screen(browser, "tsne", 3, source="prior"))
    assert [src for src, text in cards(browser) if "prior draw 3" in text] == [prior["img"][3]]


def test_class_name_with_markup_shows_as_text(browser, digits_page: Path) -> None:
    open_page(browser, digits_page)
    points = model_data(browser, "points")
    row = points["label"].index(MARKUP)
    hover(browser, point_on_screen(browser, "pca", row))
    (src, text), = cards(browser)
    assert text.splitlines()[0] == MARKUP
    legend = browser.execute_script(VIEWS + "return [...elements(document)].filter(el => "
                                    "String(el.className).includes('bk-label')).map(el => el.innerText)")
    assert MARKUP in legend
    sources = browser.execute_script(VIEWS + "return [...elements(document)].filter(el => el.tagName == 'IMG')"
                                     ".map(el => el.getAttribute('src'))")
    assert "x" not in sources  # no element was made of the name
    assert browser.execute_script("return document.title") == f"{digits_page.parent.parent.name}: latent explorer, " \
                                                               f"epochs 0 to {EPOCHS - 1}"


def test_click_draws_a_path_and_the_legend_hides_a_class(browser, digits_page: Path) -> None:
    from selenium.webdriver.common.action_chains import ActionChains

    open_page(browser, digits_page)
    points = model_data(browser, "points")
    row = 11
    hover(browser, point_on_screen(browser, "tsne", row))
    ActionChains(browser).click().perform()
    paths = until(browser, lambda: (lambda drawn: drawn if drawn["pca_x"] else None)(model_data(browser, "paths")))
    assert len(paths["pca_x"]) == 1 and len(paths["pca_x"][0]) == EPOCHS and len(paths["tsne_x"][0]) == EPOCHS
    assert paths["pca_x"][0][-1] == pytest.approx(points["pca_x"][row])
    # Hiding the class of that input hides it in both views, and hovering passes over it.
    label = points["label"][row]
    def item():  # the legend's entry of that class (drawn anew when clicked)
        return browser.execute_script(VIEWS + "return [...elements(document)].find(el => "
                                      "String(el.className).includes('bk-item') && el.innerText.trim() == arguments[0])",
                                      label)

    members = {i for i, name in enumerate(points["label"]) if name == label}
    drawn_rows = VIEWS + ("const out = {}; for (const view of ['pca', 'tsne']) "
                          "out[view] = [...model(view + '_dots').view.indices].sort((a, b) => a - b); return out")
    ActionChains(browser).click(item()).perform()
    drawn = until(browser, lambda: (lambda d: d if len(d["pca"]) < N else None)(browser.execute_script(drawn_rows)))
    assert drawn == {"pca": sorted(set(range(N)) - members), "tsne": sorted(set(range(N)) - members)}
    assert row not in browser.execute_script(VIEWS + "return Array.from(model('shown').indices)")
    # A second click shows it again, in both views.
    ActionChains(browser).click(item()).perform()
    drawn = until(browser, lambda: (lambda d: d if len(d["pca"]) == N else None)(browser.execute_script(drawn_rows)))
    assert drawn == {"pca": list(range(N)), "tsne": list(range(N))}


def test_unlabelled_colour_images_without_a_map(browser, tmp_path: Path) -> None:
    images, _ = toy_digits(N, seed=2)
    colour = np.stack([images, images[:, ::-1], 255 - images], axis=-1)  # (N, 28, 28, 3)
    page = kept_run(tmp_path, colour, np.zeros(N, np.int64), [], labelled=False, maps=False)
    open_page(browser, page)
    assert not [entry for entry in browser.get_log("browser") if entry["level"] in ("SEVERE", "WARNING")]
    assert browser.execute_script(VIEWS + "return Object.keys(views).sort()") == ["epoch", "pca", "pca_dots", "play"]
    hover(browser, point_on_screen(browser, "pca", 5))
    (src, text), = cards(browser)
    assert src.startswith("data:image/jpeg;base64,") and text.splitlines()[0].startswith("dataset index")
    texts = browser.execute_script(VIEWS + "return [...elements(document)].map(el => el.innerText)")
    assert "no t-SNE map: TSNEEmbedding is not among the trainer's callbacks" in texts  # said, not drawn empty


class TinyVAE(L.LightningModule):
    """A VAE lvae did not write: `encode` and `decode` are all the explorer asks of it."""

    def __init__(self, latent_dim: int = 3):
        super().__init__()
        self.encoder = nn.Linear(784, 2 * latent_dim)
        self.decoder = nn.Linear(latent_dim, 784)

    def encode(self, x: Tensor) -> tuple[Tensor, Tensor]:
        mu, logvar = self.encoder(x.flatten(1)).chunk(2, dim=1)
        return mu, logvar

    def decode(self, z: Tensor) -> Tensor:
        return torch.sigmoid(self.decoder(z)).view(-1, 1, 28, 28)

    def training_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> Tensor:
        mu, logvar = self.encode(batch[0])
        z = mu + torch.randn_like(mu) * torch.exp(0.5 * logvar)
        recon = F.binary_cross_entropy(self.decode(z), batch[0], reduction="sum") / len(z)
        return recon + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1).mean()

    def validation_step(self, batch: tuple[Tensor, Tensor], batch_idx: int) -> None:
        pass

    def configure_optimizers(self) -> torch.optim.Optimizer:
        return torch.optim.Adam(self.parameters(), lr=1e-2)


def digits(n: int, seed: int) -> DataLoader:
    images, labels = toy_digits(n, seed)
    x = torch.from_numpy(images).float().div(255).unsqueeze(1)  # (n, 1, 28, 28)
    return DataLoader(TensorDataset(x, torch.from_numpy(labels)), batch_size=32)


class PageWatcher(threading.Thread):
    """Reads the page whenever it changes while training runs: every version seen must be a whole page."""

    def __init__(self, page: Path):
        super().__init__(daemon=True)
        self.page, self.stop, self.seen, self.torn = page, threading.Event(), 0, []

    def run(self) -> None:
        last = None
        while not self.stop.is_set():
            try:
                stat = os.stat(self.page)
                if (stat.st_ino, stat.st_mtime_ns) != last:
                    last = (stat.st_ino, stat.st_mtime_ns)
                    text = self.page.read_bytes()
                    self.seen += 1
                    if not (text.startswith(b"<!DOCTYPE html>") and text.rstrip().endswith(b"</html>")):
                        self.torn.append(len(text))
            except FileNotFoundError:
                pass
            time.sleep(0.002)


class EpochCheck(L.Callback):
    """After each validation epoch (after the explorer's hook): once its page is written, it shows every epoch
    drawn so far."""

    def __init__(self, explorer: LatentExplorer, page: Path):
        self.explorer, self.page, self.checked = explorer, page, []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if trainer.sanity_checking:
            return
        self.explorer.join()
        kept = sorted(int(p.stem.split("_")[1]) for p in (self.page.parent / "explorer").glob("epoch_*.npz"))
        if trainer.current_epoch in kept:
            assert self.page.is_file()
            assert f"latent explorer, {span(kept)}</title>" in self.page.read_text()
            self.checked.append(trainer.current_epoch)


def span(epochs: list[int]) -> str:
    if len(epochs) == 1:
        return f"epoch {epochs[0]}"
    every = len(epochs) == epochs[-1] - epochs[0] + 1
    return f"epochs {epochs[0]} to {epochs[-1]}" if every else f"{len(epochs)} epochs from {epochs[0]} to {epochs[-1]}"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, list[int], PageWatcher]:
    """A plain Trainer, a module written here, the t-SNE map and the explorer: 3 epochs, the page watched."""
    root = tmp_path_factory.mktemp("fit")
    page = root / "latents" / "explorer.html"
    # Every epoch drawn, and the page written with each, so that each one's page can be checked.
    explorer = LatentExplorer(skip_when_busy=False, page_seconds=0)
    check = EpochCheck(explorer, page)
    watcher = PageWatcher(page)
    L.seed_everything(0)
    trainer = L.Trainer(max_epochs=3, accelerator="cpu", default_root_dir=root, logger=False,
                        callbacks=[TSNEEmbedding(perplexity=5.0, n_prior=8, skip_when_busy=False), explorer, check],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    watcher.start()
    try:
        trainer.fit(TinyVAE(), digits(128, seed=0), digits(60, seed=1))
    finally:
        watcher.stop.set()
        watcher.join()
    return root, check.checked, watcher


def test_callback_rewrites_the_page_each_drawn_epoch(trained) -> None:
    root, checked, watcher = trained
    latents = root / "latents"
    kept = sorted(int(p.stem.split("_")[1]) for p in (latents / "explorer").glob("epoch_*.npz"))
    assert kept == checked == [0, 1, 2]  # each epoch's page, written once it was drawn, showed every epoch so far
    assert watcher.seen >= 1 and not watcher.torn, f"a page was seen cut short: {watcher.torn} bytes"
    assert not list(latents.glob(".explorer.html.*")) and not list((latents / "explorer").glob(".*"))
    html = (latents / "explorer.html").read_text()
    assert f"latent explorer, {span(kept)}</title>" in html
    with np.load(latents / "explorer" / "inputs.npz") as inputs:
        assert len(inputs["index"]) == 60 and list(inputs["names"]) == []
    with np.load(latents / "explorer" / f"epoch_{kept[-1]:03d}.npz") as epoch:
        assert epoch["pca"].shape == (60, 2) and np.isnan(epoch["neg_elbo"]).all()  # the module has no ELBO
        assert str(epoch["tsne_map"]) == f"tsne/map_{kept[-1]:03d}.npz"
        assert (latents / str(epoch["tsne_map"])).is_file()


def test_lvae_explore_rewrites_the_page_and_refuses_a_run_without_it(trained, tmp_path: Path, capsys) -> None:
    root = trained[0]
    page = root / "latents" / "explorer.html"
    before = page.read_text()
    page.unlink()
    assert explore_main([str(root)]) == 0
    assert f"wrote {page}" in capsys.readouterr().out
    assert page.read_text().split("<title>")[1].split("</title>")[0] == \
        before.split("<title>")[1].split("</title>")[0]
    old = tmp_path / "old-run"
    (old / "latents" / "scatter").mkdir(parents=True)  # a run from before the explorer: its PNGs only
    assert explore_main([str(old)]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("lvae: error: ") and "trained without LatentExplorer" in err and len(err.splitlines()) == 1
    assert not (old / "latents" / "explorer.html").exists()


def test_lvae_explore_on_a_full_disk_says_it_cannot_write_the_page_and_leaves_no_part_of_it(trained, small_disk: Path,
                                                                                              capsys) -> None:
    # The run's kept epochs copied onto a 2 MiB disk, then the disk filled but for 64 kB: the page (about 1.8 MB,
    # bokeh's script inline) does not fit. The kept files are whole, so the message is about the page, not about
    # "damaged" epochs.
    run = small_disk / "run"
    shutil.copytree(trained[0] / "latents" / "explorer", run / "latents" / "explorer")
    shutil.copytree(trained[0] / "latents" / "tsne", run / "latents" / "tsne")
    free = shutil.disk_usage(small_disk).free
    (small_disk / "filler").write_bytes(b"\0" * (free - 64 * 1024))
    assert explore_main([str(run)]) == 1
    err = capsys.readouterr().err.strip()
    assert err == (f"lvae: error: cannot write {run / 'latents' / 'explorer.html'} (No space left on device); make "
                   "room on that disk, or give lvae explore a run folder it can write in, and run it again")
    assert sorted(p.name for p in (run / "latents").iterdir()) == ["explorer", "tsne"]  # no half-written page
    for kept in (trained[0] / "latents" / "explorer").iterdir():  # what the run kept is untouched
        assert (run / "latents" / "explorer" / kept.name).read_bytes() == kept.read_bytes()


class PageTitles(L.Callback):
    """After each validation epoch (after the explorer's hook, its drawing waited for): the page's title, if any."""

    def __init__(self, explorer: LatentExplorer, page: Path):
        self.explorer, self.page, self.titles = explorer, page, []

    def on_validation_epoch_end(self, trainer: L.Trainer, pl_module: L.LightningModule) -> None:
        if not trainer.sanity_checking:
            self.explorer.join()
            self.titles.append(self.page.read_text().split("<title>")[1].split("</title>")[0]
                               if self.page.is_file() else None)


@pytest.mark.parametrize("ends", ["max_epochs", "SIGTERM"])
def test_during_fit_the_page_waits_page_seconds_and_ends_with_every_epoch(tmp_path: Path, ends: str) -> None:
    # Writing the page costs more than an epoch's other pictures: with page_seconds longer than the fit, no epoch
    # writes it during fit (the first would hold up the drawing of short epochs), every epoch is kept, and the fit's
    # last epoch, or the interrupt, writes it with them all.
    page = tmp_path / "latents" / "explorer.html"
    explorer = LatentExplorer(skip_when_busy=False, page_seconds=3600)
    titles = PageTitles(explorer, page)
    trainer = L.Trainer(max_epochs=3 if ends == "max_epochs" else 5, accelerator="cpu", default_root_dir=tmp_path,
                        logger=False, callbacks=[explorer, titles, *([StopsMidEpoch(3)] if ends == "SIGTERM" else [])],
                        enable_progress_bar=False, enable_checkpointing=False, enable_model_summary=False)
    L.seed_everything(0)
    if ends == "SIGTERM":
        from lightning.pytorch.utilities.exceptions import SIGTERMException

        with pytest.raises(SIGTERMException):
            trainer.fit(TinyVAE(), digits(128, seed=0), digits(60, seed=1))
    else:
        trainer.fit(TinyVAE(), digits(128, seed=0), digits(60, seed=1))
    # With max_epochs the last epoch's job writes the page, so the end of fit has none left to write.
    assert [title and title.split(", ")[-1] for title in titles.titles] == \
        [None, None, None if ends == "SIGTERM" else "epochs 0 to 2"]
    assert sorted(p.name for p in (tmp_path / "latents" / "explorer").glob("epoch_*.npz")) == \
        ["epoch_000.npz", "epoch_001.npz", "epoch_002.npz"]
    assert "latent explorer, epochs 0 to 2</title>" in page.read_text()
