"""File and folder names made from data: the one function every such name goes through.

Detector class names, target names, concept names and image file stems come from data
or from a user's configuration; any of them may hold ``/``, ``..``, ``:``, a name Windows
reserves (``CON``, ``NUL``, ...), nothing at all, or hundreds of characters.
:func:`safe_name` turns each into a name that is valid on every common file system,
stays inside the folder it is joined to, and is bounded in length. A name that is
already safe is kept as it is, so that the usual names (``truck``,
``construction_vehicle``, ``scene_0001``) read the same on disk as in the data.
Its keywords give the other name made from data, a shard's
(:func:`rare_objects.io.sources.shard_slug`), from the same rule.
"""

from __future__ import annotations

import hashlib
import re

# What a safe name is made of (runs of anything else become "_").
_UNSAFE = re.compile(r"[^A-Za-z0-9._+-]+")

# Device names that Windows refuses as a file name, with or without an extension.
WINDOWS_RESERVED = frozenset(
    {"CON", "PRN", "AUX", "NUL"}
    | {f"COM{i}" for i in range(1, 10)}
    | {f"LPT{i}" for i in range(1, 10)}
)

DIGEST_CHARS = 8


def is_safe(text: str, max_len: int = 48) -> bool:
    """Whether ``text`` is usable as a file name as it is (see :func:`safe_name`)."""
    return (
        0 < len(text) <= max_len
        and _UNSAFE.search(text) is None
        and not text.startswith(".")
        and not text.endswith(".")
        and text.split(".")[0].upper() not in WINDOWS_RESERVED
    )


def safe_name(
    value,
    max_len: int | None = 48,
    *,
    unsafe: re.Pattern = _UNSAFE,
    joiner: str | None = None,
    portable: bool = True,
    empty: str = "_",
    mark: str = "-",
    digest_chars: int = DIGEST_CHARS,
) -> str:
    """A file or folder name made from a data value (a class, concept, target name, image stem).

    A safe name (only ``A-Z a-z 0-9 . _ + -``, no leading or trailing dot, not a
    name Windows reserves, 1 to ``max_len`` characters) is returned as it is.
    Any other gets its unsafe runs replaced by ``_``, leading dots removed, is cut
    to ``max_len`` characters (``_`` when nothing is left; ``_`` before a reserved
    name followed by a dot, as ``NUL.txt``), and gets ``-`` and
    8 hex digits of the SHA-1 of the original value appended: ``car/van`` ->
    ``car_van-4935b3db``, ``../../x`` -> ``_.._x-9bdbf20b``, ``CON`` -> ``CON-...``.
    So the result is never empty, ``.`` or ``..``, holds no path separator, is at
    most ``max_len + 9`` ASCII characters, and two different values give two
    different names (``car/van`` and ``car_van`` stay apart) except for a hash
    collision or a safe value that spells another value's hashed form.

    The keywords change the rule for other names (the shards'): runs of ``unsafe``
    become ``_``; with ``joiner`` each ``/``-separated part is cleaned on its own and
    the parts joined by it; without ``portable`` dots and Windows' names are left as
    they are; ``empty`` names an empty value; ``max_len`` None cuts nothing; a name
    that differs from the value gets ``mark`` and ``digest_chars`` hex digits.
    """
    text = str(value)
    parts = text.split("/") if joiner is not None else [text]
    cleaned = (joiner or "").join(unsafe.sub("_", part) for part in parts)
    if portable:
        cleaned = cleaned.lstrip(".")
    if max_len is not None:
        cleaned = cleaned[:max_len]
    cleaned = cleaned or empty
    if portable and cleaned.split(".")[0].upper() in WINDOWS_RESERVED:
        # NUL.txt: reserved whatever follows
        cleaned = "_" + (cleaned if max_len is None else cleaned[: max_len - 1])
    if cleaned == text and not (portable and text.endswith(".")):
        return text  # already safe (for the portable rule: is_safe(text, max_len))
    digest = hashlib.sha1(text.encode("utf-8")).hexdigest()[:digest_chars]
    return f"{cleaned}{mark}{digest}"
