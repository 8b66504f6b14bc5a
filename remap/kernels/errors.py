"""The one error class of the kernel matrix.

Why its own class: "the guest did not boot", "the package cannot be fetched" and "qemu is
missing" are neither usage nor experiment mistakes; the CLI prints them as one line with their
own exit code (8), whatever part of fetch/initramfs/guest raised them.
"""

from __future__ import annotations

from ..errors import RemapError


class KernelError(RemapError):
    """A kernel cannot be listed, fetched, or booted, or its guest failed or hung."""

    exit_code = 8
