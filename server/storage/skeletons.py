"""What a store notes about the confusables data its username skeletons were made with, shared by the stores.

The note is ``"<data version> @ <ICU module fingerprint>"`` (``server.security``). While the installed ICU
module is the one noted, the data is too, known without loading ICU (about 12 ms of every start-up); only
when it differs does a store load ICU, compare the data versions, and recompute the skeletons if those differ.
A note from before the fingerprint (a bare version) reads as another module: checked once, then rewritten.
"""

from __future__ import annotations

from server.security import skeleton_data_fingerprint, skeleton_data_version

_SEPARATOR = " @ "


def noted_module_is_current(note: str | None) -> bool:
    """Whether ``note`` names the ICU module installed now: the skeletons need no check at all."""
    fingerprint = skeleton_data_fingerprint()
    return bool(fingerprint) and (note or "").partition(_SEPARATOR)[2] == fingerprint


def noted_version(note: str | None) -> str:
    """The data version ``note`` records ("" when none)."""
    return (note or "").partition(_SEPARATOR)[0]


def current_note(has_users: bool) -> str:
    """The note to store now. With no users there is nothing made with the data: the module alone is noted,
    with an empty version, so that ICU is not loaded for it (the next other module loads it and checks)."""
    fingerprint = skeleton_data_fingerprint()
    version = skeleton_data_version() if has_users or not fingerprint else ""
    return f"{version}{_SEPARATOR}{fingerprint}"
