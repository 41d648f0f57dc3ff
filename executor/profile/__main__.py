"""`python -m executor.profile ARGS`: what torchrun runs on every rank (the same arguments as `helix profile`)."""

from __future__ import annotations

import typer

from executor.profile.command import profile_command


def main() -> None:
    app = typer.Typer(add_completion=False, pretty_exceptions_enable=False)
    app.command()(profile_command)
    app()


if __name__ == "__main__":
    main()
