"""`lvae explore runs/<run_id>`: write a run's latent explorer page again, from what the run kept.

`LatentExplorer` keeps each drawn epoch under ``latents/explorer/`` and writes ``latents/explorer.html`` as training
goes; this writes the page again for a finished, interrupted or resumed run (for instance after its t-SNE maps were
finished, or with a newer lvae), without training or loading a checkpoint.
"""

import sys
from pathlib import Path
from typing import Optional

from jsonargparse import ArgumentParser

from lvae.errors import ConfigError, DataFilesError, LVAEError

DESCRIPTION = ("Write a run's latent explorer page, runs/<run_id>/latents/explorer.html, again from the epochs it kept "
               "(one offline page: the PCA view and the t-SNE map, replayed epoch by epoch).")


def explore(run_dir: "str | Path") -> Path:
    """Write the explorer page of the run folder `run_dir` (``runs/<run_id>``, or one of its ``validate/``
    folders) from the data kept under its ``latents/explorer/``; returns the page's path."""
    from lvae.figures.explorer import INPUTS, KEPT, PAGE, kept_epochs, write_page

    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise ConfigError(f"{run_dir} is not a run folder: no such folder (give runs/<run_id>)")
    latents = run_dir / "latents"
    kept = latents / KEPT
    if not (kept / INPUTS).is_file() or not kept_epochs(kept):
        raise DataFilesError(f"{run_dir} kept no epochs for the explorer (no {kept / INPUTS} and epoch_*.npz beside "
                             "it): it was trained without LatentExplorer, before lvae had it or with it left out of "
                             f"trainer.callbacks, so there is nothing to replay; its pictures are the PNGs under "
                             f"{latents}")
    try:
        write_page(latents / PAGE)
    except (OSError, KeyError, ValueError) as err:
        if isinstance(err, OSError) and err.filename is not None and Path(err.filename).parent == latents:
            # The page, or the file beside it it is written to: a full disk, or a folder lvae may not write in.
            raise LVAEError(f"cannot write {latents / PAGE} ({err.strerror}); make room on that disk, or give "
                            "lvae explore a run folder it can write in, and run it again") from None
        raise DataFilesError(f"{kept} cannot be read back ({type(err).__name__}: {err}); the epochs it kept are "
                             "damaged") from err  # a kept file cut short or of another kind
    return latents / PAGE


def main(argv: Optional[list[str]] = None) -> int:
    """`lvae explore RUN_DIR`: the exit code, 0 when the page is written; a refusal is one line, exit code 2."""
    parser = ArgumentParser(prog="lvae explore", description=DESCRIPTION)
    parser.add_argument("run_dir", type=str, help="the run folder, runs/<run_id>")
    args = parser.parse_args(argv)
    try:
        page = explore(args.run_dir)
    except LVAEError as err:
        print(f"lvae: error: {err}", file=sys.stderr)
        return err.exit_code
    print(f"lvae: wrote {page} ({page.stat().st_size / 1e6:.1f} MB); open it in a browser")
    return 0
