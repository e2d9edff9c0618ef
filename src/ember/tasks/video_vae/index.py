"""A cache of frame counts, so start-up does not re-probe every video of a large dataset.

Entries are keyed by path and remembered with the file's size and modification time: a file
that changed is probed again. The cache is a JSON file beside the data; if that place is
read-only, the counts are used for this run only.
"""
from __future__ import annotations

import json
import logging
import os
from pathlib import Path

from .video_io import count_frames

log = logging.getLogger("ember")


class FrameIndex:
    def __init__(self, cache_file: Path):
        self.cache_file = cache_file
        self.probed = 0
        try:
            self.entries = json.loads(cache_file.read_text())
        except (OSError, ValueError):
            self.entries = {}

    def frames(self, path: str) -> tuple[int, str | None]:
        """(frame count, None) or (0, why the file cannot be used)."""
        try:
            stat = os.stat(path)
        except OSError as err:
            return 0, err.strerror or "missing"
        key = os.path.abspath(path)
        known = self.entries.get(key)
        if known and known["size"] == stat.st_size and known["mtime"] == stat.st_mtime:
            return known["frames"], known["error"]
        self.probed += 1
        if stat.st_size == 0:  # say so, rather than the decoder's "Invalid data found"
            self.entries[key] = {"size": 0, "mtime": stat.st_mtime, "frames": 0, "error": "empty file"}
            return 0, "empty file"
        try:
            frames, error = count_frames(path), None
            if frames < 1:
                frames, error = 0, "no frames"
        except Exception as err:  # PyAV and Pillow raise many types for broken files
            # PyAV's OSErrors carry the decoder's words in strerror; str() adds an errno and the path
            reason = getattr(err, "strerror", None) or (str(err).splitlines() or [type(err).__name__])[0]
            frames, error = 0, reason[:120]
        self.entries[key] = {"size": stat.st_size, "mtime": stat.st_mtime, "frames": frames, "error": error}
        return frames, error

    def save(self) -> None:
        if not self.probed:
            return
        try:
            tmp = self.cache_file.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.entries))
            os.replace(tmp, self.cache_file)
        except OSError as err:
            log.info("could not cache video frame counts at %s (%s); they are probed again next run",
                     self.cache_file, err.strerror)
