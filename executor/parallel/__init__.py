"""Parallel runtimes of one rank: process groups (`groups`), Ulysses sequence parallelism (`ulysses`),
data-parallel gradient sync and the (ZeRO-1) optimizer (`data`), and the token-level pipeline (`pipeline/`)."""
