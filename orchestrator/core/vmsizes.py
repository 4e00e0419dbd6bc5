"""Azure VM sizes -> (vCPUs, memory MiB), from Azure's published size tables."""
from __future__ import annotations

_TABLE: dict[str, tuple[int, int]] = {
    "Standard_A1_v2": (1, 2048), "Standard_A2_v2": (2, 4096), "Standard_A4_v2": (4, 8192),
    "Standard_B1s": (1, 1024), "Standard_B1ms": (1, 2048), "Standard_B2s": (2, 4096),
    "Standard_B2ms": (2, 8192), "Standard_B4ms": (4, 16384), "Standard_B8ms": (8, 32768),
    "Standard_D1_v2": (1, 3584), "Standard_D2_v2": (2, 7168), "Standard_D3_v2": (4, 14336),
    "Standard_D4_v2": (8, 28672), "Standard_D5_v2": (16, 57344),
    "Standard_DS1_v2": (1, 3584), "Standard_DS2_v2": (2, 7168), "Standard_DS3_v2": (4, 14336),
    "Standard_DS4_v2": (8, 28672), "Standard_DS5_v2": (16, 57344),
    "Standard_D2_v3": (2, 8192), "Standard_D4_v3": (4, 16384), "Standard_D8_v3": (8, 32768),
    "Standard_D2s_v3": (2, 8192), "Standard_D4s_v3": (4, 16384), "Standard_D8s_v3": (8, 32768),
    "Standard_D16s_v3": (16, 65536),
    "Standard_D2_v4": (2, 8192), "Standard_D4_v4": (4, 16384), "Standard_D2s_v4": (2, 8192),
    "Standard_D4s_v4": (4, 16384), "Standard_D2ds_v4": (2, 8192), "Standard_D4ds_v4": (4, 16384),
    "Standard_D2as_v4": (2, 8192), "Standard_D4as_v4": (4, 16384),
    "Standard_D2_v5": (2, 8192), "Standard_D4_v5": (4, 16384), "Standard_D2s_v5": (2, 8192),
    "Standard_D4s_v5": (4, 16384), "Standard_D8s_v5": (8, 32768), "Standard_D2ds_v5": (2, 8192),
    "Standard_D2as_v5": (2, 8192), "Standard_D4as_v5": (4, 16384),
    "Standard_E2s_v3": (2, 16384), "Standard_E4s_v3": (4, 32768), "Standard_E2s_v5": (2, 16384),
    "Standard_F2s_v2": (2, 4096), "Standard_F4s_v2": (4, 8192), "Standard_F8s_v2": (8, 16384),
    "Standard_NV6": (6, 57344), "Standard_NC6": (6, 57344),
}

VM_SIZES: dict[str, tuple[str, int, int]] = {
    name.lower(): (name, cpus, memory) for name, (cpus, memory) in _TABLE.items()
}


def vm_resources(size: str) -> tuple[int, int]:
    """(vCPUs, memory in MiB) for an Azure size name, matched case-insensitively."""
    _, cpus, memory = VM_SIZES[size.lower()]
    return cpus, memory
