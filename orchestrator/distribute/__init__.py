"""Distribute targets: one class per target kind behind one small interface, chosen by a
factory (as kiwi does for disk formats): VHD (vhd.py), ManagedImage (managed_image.py) and
SharedImage (gallery.py); the last two publish into libvirt storage pools (publish.py)."""
from __future__ import annotations

from orchestrator.distribute.base import DistributeJob, Distributor, Reusable
from orchestrator.distribute.gallery import SharedImageDistributor
from orchestrator.distribute.managed_image import ManagedImageDistributor
from orchestrator.distribute.vhd import VhdDistributor

_KINDS: dict[str, type[Distributor]] = {"VHD": VhdDistributor, "ManagedImage": ManagedImageDistributor,
                                        "SharedImage": SharedImageDistributor}


def distributor_for(kind: str) -> Distributor:
    """The distributor of a target kind (`TargetPlan.kind`); a kind the build cannot
    distribute yet was refused before the build started (core/buildable.py)."""
    try:
        return _KINDS[kind]()
    except KeyError:
        raise ValueError(f"no distributor for target kind {kind!r}") from None


__all__ = ["DistributeJob", "Distributor", "Reusable", "distributor_for"]
