"""Loaders turn source files into splits: named image arrays read chunk by chunk, with labels.

Every loader yields `SplitInput`s whose images are read lazily (`ImageArray.chunks`), so an
ingest holds one chunk of pixels at a time whatever the dataset's size.
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

__all__ = [
    "ImageArray",
    "MemoryArray",
    "SourceFile",
    "SplitInput",
    "SplitSpec",
    "from_memory",
    "parse_split_spec",
    "plan_arrays",
]
