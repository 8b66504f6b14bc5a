"""CLI commands for the profile side of remap (see remap.cli for the shared contract)."""

from __future__ import annotations

import argparse


def register(sub: argparse._SubParsersAction) -> None:
    """Add this module's subcommands to the remap parser."""
