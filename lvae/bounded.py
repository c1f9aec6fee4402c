"""What reading an untrusted checkpoint or config may cost, checked before the reader that would pay for it.

A file from elsewhere can ask its reader for far more than its own size: a checkpoint of compressed records for
gigabytes of memory, a YAML document of nested aliases (a "billion laughs") for more values than memory holds. Each
check here reads only what states that cost (a zip's directory, a YAML event stream) and refuses the file by name.
"""

import os
import zipfile
from pathlib import Path
from typing import BinaryIO, Optional, Union

import yaml

from lvae.errors import CheckpointError, ConfigError

ALIAS_VALUES = 100_000  # values the aliases of one YAML document may add to those it writes (lvae's own: none)


def check_checkpoint_archive(path: Union[str, os.PathLike, BinaryIO]) -> None:
    """Refuse a checkpoint whose loading could take more memory than the file's own size, before `torch.load`.

    torch.save writes a zip archive whose records are stored as they are (ZIP_STORED), so loading one costs at most
    the file's size. torch.load inflates compressed records too, and 2 MB of deflated zeros are 2 GiB of storage.
    So every record must be stored, and the sizes the archive's directory declares must add up to no more than the
    file's (records sharing bytes would each be read in full). Only the directory at the end of the file is read.

    A file in torch's legacy format (a pickle, from torch < 1.6 or ``_use_new_zipfile_serialization=False``) is
    refused: its loader sets aside each storage at the size its pickle declares before reading any of it, so a few
    bytes can ask for any amount of memory, and neither lvae nor Lightning writes that format.

    `path` may also be a seekable binary file, as torch.load takes; it is left at the position it had.
    Raises CheckpointError naming the file, what is wrong and the fix.
    """
    if isinstance(path, (str, os.PathLike)):
        with open(path, "rb") as f:
            return check_checkpoint_archive(f)
    name, start = getattr(path, "name", "the checkpoint"), path.tell()
    try:
        size = path.seek(0, os.SEEK_END)
        try:
            with zipfile.ZipFile(path) as archive:
                records = archive.infolist()
        except zipfile.BadZipFile:
            path.seek(0)
            if path.read(1) == b"\x80":  # a pickle's PROTO opcode, the first byte of the legacy format
                raise CheckpointError(
                    f"{name} is refused: it is in torch's legacy checkpoint format (torch < 1.6), whose loader sets "
                    "aside the memory the file declares before reading it. lvae reads the zip archives torch.save "
                    "writes; if you trust the file, load it in Python and save it again with torch.save.") from None
            raise CheckpointError(f"{name} is not a checkpoint: it is not a whole zip archive, as torch.save writes "
                                  "(another kind of file, or one cut short). Use a checkpoint written by lvae or "
                                  "Lightning, copied whole.") from None
    finally:
        path.seek(start)
    packed = [r for r in records if r.compress_type != zipfile.ZIP_STORED or r.compress_size != r.file_size]
    if packed:
        raise CheckpointError(
            f"{name} is refused: {len(packed)} of its {len(records)} records are compressed (e.g. {packed[0].filename}"
            f"; {sum(r.compress_size for r in packed)} bytes that inflate to {sum(r.file_size for r in packed)}), "
            "which torch.save never does, and loading it would take the inflated size in memory. Use the checkpoint "
            "as torch.save wrote it, not a recompressed copy.")
    declared = sum(record.file_size for record in records)
    if declared > size:
        raise CheckpointError(
            f"{name} is refused: its records declare {declared} bytes, more than the file's {size}, so they share "
            "bytes and loading it would take more memory than it holds. Use the checkpoint as torch.save wrote it.")


def check_yaml_aliases(path: Union[str, os.PathLike], text: Optional[Union[str, bytes]] = None) -> None:
    """Refuse a YAML document whose aliases would add more than `ALIAS_VALUES` values to those it writes.

    PyYAML builds an alias as a second reference to the same object, but jsonargparse copies and walks the config as
    a tree, so a few hundred bytes of nested aliases make `lvae fit` grow without end. The parser's events are
    counted, each alias standing for the values of its anchor; nothing is built. An alias inside its own anchor would
    be endless, and is refused too. A document that does not parse is left to the parser's own message.

    Args:
        path: the YAML file, named in messages.
        text: its content, if already read (e.g. a config given as a string); else the file is read.

    Raises ConfigError naming the file, the alias and the fix.
    """
    if text is None:
        text = Path(path).read_bytes()
    loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)  # jsonargparse's parser: libyaml where installed
    sizes: dict[str, int] = {}  # anchor -> the values it stands for: itself and everything in it
    open_anchors: list[Optional[str]] = []  # of each collection being read, outermost first
    open_values: list[int] = []  # values in each collection being read so far, itself included
    written = expanded = 0  # values the document writes, and those it stands for once its aliases are expanded
    try:
        for event in yaml.parse(text, Loader=loader):
            if isinstance(event, yaml.CollectionEndEvent):
                anchor, values = open_anchors.pop(), open_values.pop()
                if anchor is not None:
                    sizes[anchor] = values
                if open_values:
                    open_values[-1] += values
                continue
            if isinstance(event, yaml.AliasEvent):
                if event.anchor in open_anchors:
                    raise ConfigError(
                        f"{path} is refused: the alias *{event.anchor} (line {event.start_mark.line + 1}) is inside "
                        f"its own anchor &{event.anchor}, which makes an endless value. Write the value out instead.")
                if event.anchor not in sizes:
                    continue  # an undefined alias: the parser names it
                values = sizes[event.anchor]
                expanded += values
                if expanded - written - 1 > ALIAS_VALUES:
                    raise ConfigError(
                        f"{path} is refused: its aliases would add more than {ALIAS_VALUES:,} values to those it writes "
                        f"(*{event.anchor} on line {event.start_mark.line + 1} alone stands for {values:,}), as a "
                        "'billion laughs' does, and reading it would take memory without end. Write the repeated values "
                        "out, or use fewer levels of aliases.")
            elif isinstance(event, yaml.CollectionStartEvent):
                open_anchors.append(event.anchor)
                open_values.append(1)
                written, expanded = written + 1, expanded + 1
                continue  # counted in its parent when it ends
            elif isinstance(event, yaml.ScalarEvent):
                values = 1
                expanded += 1
                if event.anchor is not None:
                    sizes[event.anchor] = 1
            else:
                continue  # the stream's and documents' own events
            written += 1
            if open_values:
                open_values[-1] += values
    except yaml.YAMLError:
        return
