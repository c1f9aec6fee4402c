"""Read an offline W&B run back from disk, as `wandb sync` would upload it.

A `.wandb` file is a LevelDB-style log: a 7-byte file header (":W&B", magic 0xBEE1, version 0), then 32 KiB
blocks of records, each with a 7-byte header (CRC32, length, type: full/first/middle/last) carrying one
serialized `wandb_internal_pb2.Record`. wandb 0.31 no longer ships a Python reader, so the tests keep this one.
"""

import json
import struct
import time
from dataclasses import dataclass, field
from pathlib import Path

from wandb.proto import wandb_internal_pb2 as pb

BLOCK = 32768
HEADER = struct.Struct("<IHB")  # crc32, length, type
FULL, FIRST, MIDDLE, LAST = 1, 2, 3, 4


def records(path: Path) -> list[pb.Record]:
    data = Path(path).read_bytes()
    ident, magic, version = struct.unpack("<4sHB", data[:7])
    assert (ident, magic, version) == (b":W&B", 0xBEE1, 0), f"{path} is not a W&B run file"
    out, pos, pending = [], 7, b""
    while pos + HEADER.size <= len(data):
        room = BLOCK - pos % BLOCK
        if room < HEADER.size:  # the rest of a block too short for a header is padding
            pos += room
            continue
        _, length, kind = HEADER.unpack_from(data, pos)
        if kind == 0 and length == 0:
            pos += room
            continue
        payload = data[pos + HEADER.size: pos + HEADER.size + length]
        pos += HEADER.size + length
        if kind == FULL:
            pending = payload
        elif kind == FIRST:
            pending = payload
            continue
        elif kind == MIDDLE:
            pending += payload
            continue
        else:
            pending += payload
        record = pb.Record()
        record.ParseFromString(pending)
        out.append(record)
        pending = b""
    return out


@dataclass
class OfflineRun:
    """What an offline run holds: history rows, config, metric definitions and the run's files folder.

    A logged image or table is stored as its fields: `latents/scatter/_type` ("image-file"), `.../path`,
    `.../caption`, and so on."""

    folder: Path
    run_id: str = ""
    history: list[dict] = field(default_factory=list)
    config: dict = field(default_factory=dict)
    step_metrics: dict[str, str] = field(default_factory=dict)  # metric glob -> its x-axis

    def rows_with(self, key: str) -> list[dict]:
        return [row for row in self.history if key in row]

    def values(self, key: str) -> list:
        return [row[key] for row in self.rows_with(key)]


def wait_until_written(run_dir: Path, timeout: float) -> None:
    """`wandb.finish()` (or a process exit) can return a few milliseconds before the W&B service has written
    the run file; wait for each run's closing "exit" record."""
    deadline = time.monotonic() + timeout
    for wandb_file in Path(run_dir).glob("**/offline-run-*/*.wandb"):
        while time.monotonic() < deadline:
            try:
                if any(r.WhichOneof("record_type") == "exit" for r in records(wandb_file)):
                    break
            except Exception:  # a record still being written
                pass
            time.sleep(0.05)


def read_run(run_dir: Path, timeout: float = 30.0) -> list[OfflineRun]:
    """Every offline W&B run below a run folder, oldest first, once written."""
    wait_until_written(run_dir, timeout)
    runs = []
    for folder in sorted(Path(run_dir).glob("**/offline-run-*")):
        run = OfflineRun(folder=folder)
        for wandb_file in folder.glob("*.wandb"):
            for record in records(wandb_file):
                kind = record.WhichOneof("record_type")
                if kind == "run":
                    run.run_id = record.run.run_id
                elif kind == "history":
                    run.history.append({item.key or "/".join(item.nested_key): json.loads(item.value_json)
                                        for item in record.history.item})
                elif kind == "config":
                    for item in record.config.update:
                        run.config[item.key or "/".join(item.nested_key)] = json.loads(item.value_json)
                elif kind == "metric":
                    metric = record.metric
                    name = metric.name or metric.glob_name
                    if metric.step_metric:
                        run.step_metrics[name] = metric.step_metric
        runs.append(run)
    return runs
