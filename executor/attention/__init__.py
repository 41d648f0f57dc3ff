"""Causal attention over packed variable-length segments: the kernels (`backends`) and the attention of a
chunk whose slices attend to the K/V pieces of their earlier slices (`prefix`). No process groups here."""
