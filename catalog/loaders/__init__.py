"""Loaders turn source files into splits: named image arrays read chunk by chunk, with labels.

Every loader plans splits whose images are read lazily: `SplitInput` (arrays of a file, read
through `ImageArray.chunks`) or `FolderSplit` (image files, decoded in worker processes into
`Chunk`s). An ingest holds one chunk of pixels at a time whatever the dataset's size.
"""

from catalog.loaders.arrays import (
    ImageArray,
    MemoryArray,
    SourceFile,
    SplitInput,
    SplitSpec,
    from_memory,
    parse_split_spec,
    plan_arrays,
)
from catalog.loaders.chunk import Chunk, SkippedFile
from catalog.loaders.folders import FolderSplit, plan_folder

PlannedSplit = SplitInput | FolderSplit
"""A split ready to ingest: arrays of a file, or the image files of a folder."""

__all__ = [
    "Chunk",
    "FolderSplit",
    "PlannedSplit",
    "SkippedFile",
    "ImageArray",
    "MemoryArray",
    "SourceFile",
    "SplitInput",
    "SplitSpec",
    "from_memory",
    "parse_split_spec",
    "plan_arrays",
    "plan_folder",
]
