"""The hand-off to MMDetection3D: its nuScenes info files cut down to the training selection.

MMDetection3D trains from *info files*, pickles of one record per nuScenes sample
(keyframe). Two layouts are in use, both written by mmdet3d's own converters:

- v1.1 and later (``tools/dataset_converters/update_infos_to_v2.py``):
  ``{"metainfo": {...}, "data_list": [record, ...]}``. Each record carries the
  nuScenes sample token as ``token``; its ``sample_idx`` is the record's position
  in the original list (an int, not a token), left as it is here.
- before v1.1 (``tools/dataset_converters/nuscenes_converter.py``):
  ``{"metadata": {"version": ...}, "infos": [record, ...]}``, with ``token`` too.

:func:`filter_info_file` keeps the records whose ``token`` is a sample of the
training selection: each kept record is the same object (keys, order and numpy
arrays untouched), the records keep their order, and every other top-level entry
(``metainfo``/``metadata`` included) is kept as it is. mmdet3d is not imported:
the records are plain dicts, lists and numpy arrays.

Unpickling runs code named in the file: the info files are the user's own,
named in the configuration, and trusted as such.
"""

from __future__ import annotations

import logging
import os
import pickle
import re
from pathlib import Path

import pyarrow.parquet as pq

from rare_objects.io import atomic, names

log = logging.getLogger("rare_objects.export.mmdet3d")

# Record-list key -> the header key beside it, per layout (v1.1+ first).
LAYOUTS = {"data_list": "metainfo", "infos": "metadata"}
TOKEN = "token"

# The protocol written when the input's cannot be told (protocols 0 and 1 have no header).
DEFAULT_PROTOCOL = 4

CONFIG_KEY = "training_selection.mmdet3d_infos"

# An extension kept as it is on an output name.
_SUFFIX = re.compile(r"\.[A-Za-z0-9]{1,16}")


class InfoFileError(ValueError):
    """An info file is not an MMDetection3D nuScenes info file; the message names it."""


def output_name(info_path: str | os.PathLike) -> str:
    """The file name of an info file's filtered copy: its own name, made safe (io.names).

    The extension stays last (``my infos.pkl`` -> ``my_infos-<hash>.pkl``): mmengine
    picks the loader of an ``ann_file`` by its extension.
    """
    name = Path(info_path).name
    suffix = Path(name).suffix if _SUFFIX.fullmatch(Path(name).suffix) else ""
    return names.safe_name(name[: len(name) - len(suffix)], max_len=100) + suffix


def info_outputs(info_paths) -> dict[str, str]:
    """Output file name -> info file, in the configuration's order.

    Raises ValueError when two info files would get the same output name (the same
    file listed twice, or two folders' ``nuscenes_infos_train.pkl``).
    """
    outputs: dict[str, str] = {}
    for path in info_paths:
        name = output_name(path)
        if name in outputs:
            raise ValueError(
                f"{CONFIG_KEY}: {outputs[name]!r} and {str(path)!r} would both be written to "
                f"training_selection/{name}; list each file once, and rename one of two "
                "files that share a name"
            )
        outputs[name] = str(path)
    return outputs


def config_problems(config: dict) -> list[str]:
    """What is wrong with ``training_selection.mmdet3d_infos`` in a validated configuration
    (one line per problem, naming the key; empty when nothing is)."""
    paths = config["training_selection"]["mmdet3d_infos"]
    if not paths:
        return []
    problems = []
    if config["input"]["kind"] != "nuscenes":
        problems.append(
            f"{CONFIG_KEY}: only for input.kind nuscenes (the info files list nuScenes sample "
            f"tokens; a {config['input']['kind']!r} input selects image paths); "
            "remove it or set it to []"
        )
    try:
        info_outputs(paths)
    except ValueError as error:
        problems.append(str(error))
    return problems


def selected_tokens(selection_path: str | os.PathLike) -> list[str]:
    """The sample tokens of training_selection.parquet, in its order."""
    return pq.read_table(selection_path, columns=["sample"]).column("sample").to_pylist()


def pickle_protocol(header: bytes) -> int | None:
    """The protocol of a pickle from its first bytes (protocol 2 and later start with
    PROTO n), or None when they do not tell."""
    if len(header) >= 2 and header[0] == pickle.PROTO[0] and 2 <= header[1]:
        return header[1]
    return None


def records_key(data, source) -> str:
    """The key of the record list of a loaded info file (``data_list`` or ``infos``).

    Raises InfoFileError, naming ``source``, for anything but one of the two layouts
    or for a record without a ``token``.
    """
    found = (
        [key for key, header in LAYOUTS.items() if key in data and header in data]
        if isinstance(data, dict)
        else []
    )
    if len(found) != 1:
        keys = sorted(map(str, data)) if isinstance(data, dict) else type(data).__name__
        raise InfoFileError(
            f"{source}: not an MMDetection3D info file: expected a dict with 'metainfo' and "
            f"'data_list' (v1.1+) or 'metadata' and 'infos' (older), found {keys}"
        )
    key = found[0]
    records = data[key]
    if not isinstance(records, list):
        raise InfoFileError(
            f"{source}: {key!r} is a {type(records).__name__}, not a list of records"
        )
    for i, record in enumerate(records):
        if not isinstance(record, dict) or TOKEN not in record:
            raise InfoFileError(
                f"{source}: record {i} of {key!r} has no {TOKEN!r} (the nuScenes sample token)"
                + ("" if isinstance(record, dict) else f": it is a {type(record).__name__}")
            )
    return key


def filter_infos(data: dict, tokens, source="info file") -> tuple[dict, dict]:
    """The info file ``data`` with only the records whose token is in ``tokens``, and counts.

    The result is a new top-level dict with the same keys in the same order; its
    record list holds the kept records themselves (not copies), in their order.
    The counts: ``layout`` (``data_list`` or ``infos``), ``kept``, ``total``,
    ``selected`` (distinct tokens asked for), ``missing`` (of those, how many no
    record carries) and ``missing_example`` (one of them, or None).
    """
    key = records_key(data, source)
    wanted = set(tokens)
    kept = [record for record in data[key] if record[TOKEN] in wanted]
    present = {record[TOKEN] for record in data[key]}
    missing = [token for token in dict.fromkeys(tokens) if token not in present]
    filtered = {name: (kept if name == key else value) for name, value in data.items()}
    return filtered, {
        "layout": key,
        "kept": len(kept),
        "total": len(data[key]),
        "selected": len(wanted),
        "missing": len(missing),
        "missing_example": missing[0] if missing else None,
    }


def read_infos(path: str | os.PathLike) -> tuple[object, int | None]:
    """The unpickled info file and its pickle protocol (None when it cannot be told)."""
    with open(path, "rb") as handle:
        protocol = pickle_protocol(handle.read(2))
        handle.seek(0)
        try:
            data = pickle.load(handle)
        except Exception as error:  # any unpickling failure: name the file
            raise InfoFileError(f"{path}: not a readable pickle: {error!r}") from error
    return data, protocol


def write_infos(data, path: str | os.PathLike, protocol: int | None) -> int:
    """Pickle ``data`` to ``path`` atomically with ``protocol`` (DEFAULT_PROTOCOL when None);
    returns the protocol written."""
    protocol = DEFAULT_PROTOCOL if protocol is None else min(protocol, pickle.HIGHEST_PROTOCOL)
    with atomic.atomic_path(path) as tmp, open(tmp, "wb") as handle:
        pickle.dump(data, handle, protocol=protocol)
    return protocol


def filter_info_file(info_path, tokens, out_path) -> dict:
    """Write ``out_path``: the info file at ``info_path`` with only the records of ``tokens``
    (see :func:`filter_infos`), in the input's pickle protocol. Returns the counts, with
    ``protocol`` (the one written)."""
    data, protocol = read_infos(info_path)
    filtered, counts = filter_infos(data, tokens, source=info_path)
    return {**counts, "protocol": write_infos(filtered, out_path, protocol)}


def describe(info_path, counts: dict) -> str:
    """One log line for :func:`filter_info_file`'s counts."""
    line = (
        f"{info_path} ({counts['layout']}): kept {counts['kept']} of {counts['total']} records "
        f"for {counts['selected']} selected samples"
    )
    if counts["missing"]:
        line += (
            f"; {counts['missing']} selected sample tokens are not in the file "
            f"(e.g. {counts['missing_example']})"
        )
    return line
