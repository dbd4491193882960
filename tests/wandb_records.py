"""Reads a W&B offline run file (``run-<id>.wandb``) without the network: what the dashboard will show.

The file is W&B's header (``:W&B``, magic 0xBEE1, version 0) then a LevelDB-style log: 32 KiB blocks
of chunks, each ``crc32 (4) | length (2, little-endian) | type (1: full, 2: first, 3: middle, 4: last)``
and the data; a record is one ``wandb_internal_pb2.Record``, whole or in chunks.
"""

from __future__ import annotations

import struct
from collections import defaultdict
from pathlib import Path

BLOCK = 32768
HEADER = 7


def records(path: Path):
    from wandb.proto import wandb_internal_pb2

    data = Path(path).read_bytes()
    assert data[:4] == b":W&B", f"{path}: not a W&B run file"
    pos, parts = HEADER, b""
    while pos + 7 <= len(data):
        if BLOCK - pos % BLOCK < 7:  # block trailer: too short for a chunk header
            pos += BLOCK - pos % BLOCK
            continue
        _, length, kind = struct.unpack("<IHB", data[pos:pos + 7])
        chunk, pos = data[pos + 7:pos + 7 + length], pos + 7 + length
        if kind == 0 and length == 0:  # zero padding at the end
            break
        parts = chunk if kind in (1, 2) else parts + chunk
        if kind in (1, 4):
            record = wandb_internal_pb2.Record()
            record.ParseFromString(parts)
            yield record
            parts = b""


def run_contents(run_dir: Path) -> dict:
    """Keys found in every offline W&B run file under ``run_dir/wandb``: ``history`` (logged keys →
    the JSON of their values), ``config`` keys, ``summary`` keys, ``artifacts`` (type, name), ``ids``."""
    out = {"history": defaultdict(list), "config": set(), "summary": set(), "artifacts": [], "ids": set()}
    for path in sorted(Path(run_dir).glob("wandb/offline-run-*/run-*.wandb")):
        for r in records(path):
            kind = r.WhichOneof("record_type")
            if kind == "run":
                out["ids"].add(r.run.run_id)
                out["config"].update(item.key or "/".join(item.nested_key) for item in r.run.config.update)
            elif kind == "history":
                for item in r.history.item:
                    out["history"][item.key or "/".join(item.nested_key)].append(item.value_json)
            elif kind == "config":
                out["config"].update(item.key or "/".join(item.nested_key) for item in r.config.update)
            elif kind == "summary":
                out["summary"].update(item.key or "/".join(item.nested_key) for item in r.summary.update)
            elif kind == "artifact":
                out["artifacts"].append((r.artifact.type, r.artifact.name))
    return out
