"""The accelerator probe boots the real base image: under TCG it must boot; the choice is cached."""
from __future__ import annotations

import json

from orchestrator.effects.accel import choose_accelerator, guest_boots


def test_probe_boots_base_image_under_tcg(base_image):
    assert guest_boots(base_image, "tcg") is True


def test_probe_fails_for_a_disk_that_does_not_boot(tmp_path):
    disk = tmp_path / "empty.img"
    disk.write_bytes(b"\0" * 1024 * 1024)
    assert guest_boots(disk, "tcg", timeout=5) is False


def test_choice_is_cached_until_reboot(tmp_path, base_image):
    cache = tmp_path / "accel.json"
    accel, why = choose_accelerator("auto", cache, base_image)
    assert accel in ("kvm", "tcg")
    assert json.loads(cache.read_text())["accelerator"] == accel
    again, why_again = choose_accelerator("auto", cache, base_image)
    assert again == accel and "since this host booted" in why_again
    assert choose_accelerator("tcg", cache, base_image) == ("tcg", "set by ORCHESTRATOR_ACCELERATOR")
