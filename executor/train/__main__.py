"""`python -m executor.train ARGS`: what torchrun runs on every rank (the same arguments as `helix train`)."""

from __future__ import annotations

import typer

from executor.train.command import train_command


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(train_command)
    app()


if __name__ == "__main__":
    main()
