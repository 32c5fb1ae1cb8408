"""What a run computes once and reuses across its images: maps and prompt embeddings.

A batch over thousands of images often shares one map file and one prompt. `RunCaches` keeps the map as
loaded (per file and channel), the map shaped at an image's size (per file, shaping options and size:
`--map-blur` on a large map costs seconds), and the prompt embedding (per prompt, negative prompt and
what else the encoding reads). A file is known by its resolved path, size and modification time, so a map
rewritten during a run is read again. The counters say how often each thing was really computed; they go
into the run report (`map_preparations`, `prompt_encodings`). Bounded LRUs: a run with a new map or prompt
per image holds only the last few.
"""

from __future__ import annotations

import os
from collections import OrderedDict
from dataclasses import astuple, dataclass, field
from typing import Callable


class _Lru:
    def __init__(self, capacity: int):
        self.capacity = capacity
        self._items: OrderedDict = OrderedDict()

    def get(self, key, make: Callable):
        if key in self._items:
            self._items.move_to_end(key)
            return self._items[key], False
        value = make()
        self._items[key] = value
        if len(self._items) > self.capacity:
            self._items.popitem(last=False)
        return value, True


def file_identity(path: str) -> tuple:
    """(resolved path, size, mtime): a file is re-read when it changes; unreadable files are not cached."""
    try:
        stat = os.stat(path)
    except OSError:
        return ("unreadable", path, object())  # a key that never matches: the loader reports the error
    return (os.path.realpath(path), stat.st_size, stat.st_mtime_ns)


@dataclass
class RunCaches:
    map_capacity: int = 8
    prompt_capacity: int = 64
    map_loads: int = 0
    map_preparations: int = 0
    prompt_encodings: int = 0
    _raw: _Lru = field(default=None, repr=False)
    _shaped: _Lru = field(default=None, repr=False)
    _prompts: _Lru = field(default=None, repr=False)

    def __post_init__(self):
        self._raw = _Lru(self.map_capacity)
        self._shaped = _Lru(self.map_capacity)
        self._prompts = _Lru(self.prompt_capacity)

    def counters(self) -> dict:
        return {"map_loads": self.map_loads, "map_preparations": self.map_preparations, "prompt_encodings": self.prompt_encodings}

    def raw_map(self, path: str, channel: str):
        """The map's values at its own size (load.load_map), read once per file and channel."""
        from diffdiff_cli.load import load_map

        if not isinstance(path, (str, os.PathLike)):  # values already in memory (fan's uniform cells)
            self.map_loads += 1
            return load_map(path, channel)
        value, made = self._raw.get((file_identity(path), channel), lambda: load_map(path, channel))
        self.map_loads += made
        return value

    def shaped_map(self, path: str, channel: str, shaping, image_size: tuple[int, int], strict_size: bool, label: str):
        """(map at the image's size, shaped; notices), computed once per file, shaping and size."""
        from diffdiff_cli.prepare_map import shaped_map

        if not isinstance(path, (str, os.PathLike)):
            self.map_preparations += 1
            return shaped_map(self.raw_map(path, channel), image_size, shaping, strict_size, label)
        key = (file_identity(path), channel, astuple(shaping), tuple(image_size), strict_size)
        value, made = self._shaped.get(key, lambda: shaped_map(self.raw_map(path, channel), image_size, shaping, strict_size, label))
        self.map_preparations += made
        return value

    def prompt(self, key: tuple, encode: Callable):
        """The conditioning `encode()` gives, once per key (prompt, negative prompt, encoder settings)."""
        value, made = self._prompts.get(key, encode)
        self.prompt_encodings += made
        return value
