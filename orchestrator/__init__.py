"""orchestrator: build Azure VM Image Builder templates on local KVM/QEMU hosts."""

__version__ = "0.1.0"
