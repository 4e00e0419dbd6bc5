"""Azure VM sizes -> (vCPUs, memory MiB): Azure's published size tables, and for any other
current size name (Standard_B2as_v2, Standard_D4ads_v5, Standard_NC24ads_A100_v4, ...) the
vCPU count its name carries and its family's memory per vCPU."""
from __future__ import annotations

import re
from dataclasses import dataclass

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
    "Standard_B2s_v2": (2, 8192), "Standard_B2as_v2": (2, 8192), "Standard_B2als_v2": (2, 4096),
    "Standard_B2ats_v2": (2, 1024), "Standard_B4as_v2": (4, 16384), "Standard_B4s_v2": (4, 16384),
    "Standard_D2ads_v5": (2, 8192), "Standard_D4ads_v5": (4, 16384), "Standard_D2s_v6": (2, 8192),
    "Standard_D4s_v6": (4, 16384), "Standard_E4s_v5": (4, 32768), "Standard_F2s": (2, 4096),
}

VM_SIZES: dict[str, tuple[str, int, int]] = {
    name.lower(): (name, cpus, memory) for name, (cpus, memory) in _TABLE.items()
}


# GiB of memory per vCPU of each family's general-purpose sizes (Azure's size pages); an
# approximation for sizes not in the table above, said in a note.
_GIB_PER_VCPU = {"A": 2, "B": 4, "D": 4, "DC": 4, "E": 8, "EC": 8, "F": 2, "FX": 21, "G": 14, "H": 7,
                 "HB": 4, "HC": 8, "HX": 12, "L": 8, "M": 28, "NC": 7, "ND": 14, "NG": 4, "NP": 14, "NV": 7}
_SIZE_NAME = re.compile(r"^Standard_(?P<family>[A-Z]{1,2})(?P<cpus>\d{1,3})(?:-(?P<active>\d{1,3}))?"
                        r"(?P<features>[a-z]*)(?:_[A-Za-z0-9]+)*$")


@dataclass(frozen=True)
class DerivedSize:
    cpus: int
    memory_mib: int
    why: str


def size_from_name(size: str) -> DerivedSize | None:
    """A size not in the table, read from its name: Standard_<family><vCPUs>[-<active>]<features>_v<N>.
    None if the name does not have that shape or its family is unknown."""
    found = _SIZE_NAME.match(size.strip())
    if not found:
        return None
    family = found["family"]
    if family not in _GIB_PER_VCPU and family[:1] in _GIB_PER_VCPU:
        family = family[:1]
    if family not in _GIB_PER_VCPU:
        return None
    named = int(found["cpus"])
    cpus = int(found["active"]) if found["active"] else named  # constrained sizes keep the memory of `named`
    if cpus < 1 or named < 1:
        return None
    ratio = _GIB_PER_VCPU[family]
    memory = named * ratio * 1024
    return DerivedSize(cpus, memory, f"{cpus} vCPU from its name, {memory // 1024} GiB from the {family} family's "
                       f"{ratio} GiB per vCPU")


def vm_resources(size: str) -> tuple[int, int]:
    """(vCPUs, memory in MiB) for an Azure size name, matched case-insensitively: from the
    table, else derived from the name (the template loader has said so in a note)."""
    known = VM_SIZES.get(size.lower())
    if known:
        return known[1], known[2]
    derived = size_from_name(size)
    if derived is None:
        raise KeyError(size)
    return derived.cpus, derived.memory_mib
