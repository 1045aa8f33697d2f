"""What every artifact is: a folder aldm writes, known by its path; making the object reads no file."""

from __future__ import annotations

import os


class ArtifactFolder:
    """The base of :class:`~aldm.artifacts.cache.PreparedCache`, :class:`~aldm.artifacts.run.Run` and
    :class:`~aldm.artifacts.samples.SampleSet`: a path, and the paths of the files inside it."""

    def __init__(self, path: str):
        self.path = path

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.path!r})"

    def file(self, name: str) -> str:
        """The path of ``name`` inside the folder."""
        return os.path.join(self.path, name)
