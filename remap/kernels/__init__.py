"""Run the same experiment under another kernel: Debian's 6.1 under qemu, beside the host.

Why: the seed's "RSS 4 kB" is a property of kernels 2.6.34-6.1 (split RSS counting); the host
here runs a kernel whose counters are exact.  To show both, remap boots Debian's own 6.1 kernel
(fetched as a package, never installed) with the host's / shared read-only, runs the very same
remap code and targets inside, and brings the records back.

Modules, in the order a run uses them:
    catalog    which kernels exist (host, debian-6.1, debian-6.1.0-NN) and where they are cached
    fetch      apt-get download + dpkg-deb into the cache; the bootable vmlinux
    initramfs  busybox + the kernel's own virtio-9p modules + /init (the guest protocol)
    guest      qemu: bounded boot, job, power-off; KVM probe, TCG fallback
    matrix     ``run_in_guest``: experiments -> guest -> OUT/NAME.KERNEL.jsonl
    inguest    what runs inside the guest

Example::

    >>> from remap.kernels import run_in_guest
    >>> recs = run_in_guest("debian-6.1", ["vmrss-lag"], repeat=1)
    >>> recs["vmrss-lag"][1]["final_vmrss_kb"], recs["vmrss-lag"][1]["final_rss_kb"]
    (4, 28)
"""

from __future__ import annotations

import importlib

# Imported on first use: the guest side (remap.kernels.inguest) must not pay for qemu code.
_LAZY = {
    "Kernel": "catalog",
    "list_kernels": "catalog",
    "resolve": "catalog",
    "KernelError": "errors",
    "KernelImage": "fetch",
    "run_in_guest": "matrix",
}
__all__ = sorted(_LAZY)


def __getattr__(name: str):
    if name not in _LAZY:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    return getattr(importlib.import_module(f".{_LAZY[name]}", __name__), name)
