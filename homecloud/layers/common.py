"""
Steps several layers take, as plain functions of explicit arguments (called inside a layer's
@deploy function): a data disk mounted at a folder, the dnas owner, folders it owns.
"""

from __future__ import annotations

from posixpath import join, normpath

from operations import storage, system


def data_disk(what: str, device: str, fstype: str, format: bool, blank_device: str | None, path: str, options: str) -> None:
    """`device` (LABEL=, UUID= or a stable path) carries `fstype` and is mounted at `path`."""
    kind, _, value = device.partition("=")
    storage.filesystem(
        name=f"{what} {device} carries {fstype}",
        device=device,
        fstype=fstype,
        label=value if kind == "LABEL" else None,
        uuid=value if kind == "UUID" else None,
        format=format,
        blank_device=blank_device,
    )
    storage.mount(name=f"{what} {device} mounted at {path}", device=device, path=path, fstype=fstype, options=options)


def dnas_owner(user: str, uid: int, gid: int, home: str) -> None:
    """
    The owner of the dnas data: created when absent with the fixed ids; an existing account
    with other ids is refused (files would change hands). Its home is the data folder.
    """
    system.account(name=f"dnas owner {user} (uid {uid}, created only if absent)", user=user, uid=uid, gid=gid, home=home)


def owned_folders(what: str, paths: list[str], user: str, acl_installed: bool = False) -> None:
    """
    Each folder of `paths` exists, owned by `user` and its group, 0770, with a default ACL
    that keeps others out of what is created inside (files 0660 / folders 0770 at most, also
    for NFS clients that ask for 0644). What is already inside is not changed (no recursive
    chmod): the folder's own 0770 keeps other accounts out of it. `acl_installed`: an earlier
    call of this run on the host installed setfacl already (one package check, not one per call).
    """
    if not paths:
        return
    if not acl_installed:
        system.packages(name="setfacl (package acl) for the NAS folders", packages=["acl"])
    system.private_folders(name=f"{what} {', '.join(paths)}: {user} and its group only (0770, default ACL)", paths=list(paths), user=user)


def folder_levels(base: str, relative: str) -> list[str]:
    """Every folder from base/<first part> down to base/<relative>, so each level can be owned."""
    parts = normpath(relative).split("/")
    return [normpath(join(base, *parts[:depth])) for depth in range(1, len(parts) + 1)]
