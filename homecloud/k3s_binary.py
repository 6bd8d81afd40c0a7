"""
Controller side of the k3s binary: find the pinned release for a node's architecture,
download it once (k3s_install="download") or take it from an airgap folder
(k3s_install="airgap"), and verify it against the release's sha256sum file.

Nothing here touches a node. deploys/k3s.py calls `resolve()` while pyinfra loads the deploy,
that is before any operation runs on any host, so a missing binary stops the run with one
message and no host changed.

k3s release asset names (github.com/k3s-io/k3s/releases/download/<version>/...):

    arch   binary      checksums             airgap images
    amd64  k3s         sha256sum-amd64.txt   k3s-airgap-images-amd64.tar.zst|.tar.gz|.tar
    arm64  k3s-arm64   sha256sum-arm64.txt   k3s-airgap-images-arm64.tar...
    armhf  k3s-armhf   sha256sum-arm.txt     k3s-airgap-images-arm.tar...

(the 32-bit ARM release is named "arm" in the checksum and image file names, "armhf" in the
binary name; an airgap folder may also use sha256sum-armhf.txt).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from pyinfra.api.exceptions import PyinfraError

# The node side maps `uname -m` (fact k3s.K3sArch); the controller uses the same table.
from facts.k3s import MACHINE_ARCH, arch_from_machine  # noqa: F401

RELEASES_URL = "https://github.com/k3s-io/k3s/releases/download"
BINARY_NAME = {"amd64": "k3s", "arm64": "k3s-arm64", "armhf": "k3s-armhf"}
RELEASE_ARCH = {"amd64": "amd64", "arm64": "arm64", "armhf": "arm"}
IMAGE_SUFFIXES = (".tar.zst", ".tar.gz", ".tar")


class K3sSourceError(PyinfraError):
    """No verified k3s binary could be had; nothing was changed on any host."""


def source_help(version: str) -> str:
    return (
        f"no k3s {version} binary available on this controller. Choose one:\n"
        f'  - k3s_install="download": needs github.com reachable from the controller '
        f"(it downloads {RELEASES_URL}/{urllib.parse.quote(version)}/... once into k3s_download_dir);\n"
        f'  - k3s_install="airgap" with k3s_airgap_dir="/path/to/folder" holding k3s / k3s-arm64 / '
        f"k3s-armhf, their sha256sum-<arch>.txt and optionally k3s-airgap-images-<arch>.tar.zst "
        f"(no internet needed on the controller nor on the nodes);\n"
        f'  - or k3s_install="off" to skip the k3s layer.\n'
        f"Nothing was changed on any host."
    )


def checksum_names(arch: str) -> list[str]:
    names = [f"sha256sum-{RELEASE_ARCH[arch]}.txt"]
    if RELEASE_ARCH[arch] != arch:
        names.append(f"sha256sum-{arch}.txt")
    return names


def image_names(arch: str) -> list[str]:
    return [f"k3s-airgap-images-{RELEASE_ARCH[arch]}{suffix}" for suffix in IMAGE_SUFFIXES]


def parse_sha256sums(text: str) -> dict[str, str]:
    """`sha256sum` output ("<hex>  <name>" or "<hex> *<name>") -> {name: hex}."""
    sums: dict[str, str] = {}
    for line in text.splitlines():
        parts = line.strip().split(None, 1)
        if len(parts) != 2 or len(parts[0]) != 64:
            continue
        try:
            int(parts[0], 16)
        except ValueError:
            continue
        name = parts[1].strip().lstrip("*")
        sums[os.path.basename(name)] = parts[0].lower()
    return sums


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Artifact:
    path: Path
    sha256: str


@dataclass(frozen=True)
class K3sRelease:
    """A verified binary (and airgap image archives) for one version and architecture."""

    version: str
    arch: str
    binary: Artifact
    images: tuple[Artifact, ...] = field(default_factory=tuple)


def _verify(path: Path, sums: dict[str, str], name: str, where: str) -> Artifact:
    expected = sums.get(name)
    if expected is None:
        raise K3sSourceError(f"{where}: the checksum file lists no `{name}`; refusing an unverified k3s file")
    actual = sha256_of(path)
    if actual != expected:
        raise K3sSourceError(
            f"{where}: {path} does not match its checksum (sha256 {actual}, expected {expected}); "
            f"the file is corrupted or not from this release. Replace it; nothing was changed on any host."
        )
    return Artifact(path, expected)


def from_airgap(airgap_dir: str | os.PathLike, version: str, arch: str) -> K3sRelease:
    """The release in an airgap folder, verified. Raises K3sSourceError with the fix."""
    folder = Path(os.path.expanduser(str(airgap_dir)))
    where = f"k3s_airgap_dir {folder}"
    if not folder.is_dir():
        raise K3sSourceError(f"{where} is not a folder.\n" + source_help(version))
    sum_file = next((folder / n for n in checksum_names(arch) if (folder / n).is_file()), None)
    if sum_file is None:
        raise K3sSourceError(
            f"{where} has no {' or '.join(checksum_names(arch))} (from the k3s {version} release page); "
            f"homecloud never uploads an unverified k3s binary. Nothing was changed on any host."
        )
    sums = parse_sha256sums(sum_file.read_text(encoding="utf-8", errors="replace"))
    binary_path = folder / BINARY_NAME[arch]
    if not binary_path.is_file():
        raise K3sSourceError(
            f"{where} has no `{BINARY_NAME[arch]}` (the {arch} binary of k3s {version}). "
            f"Nothing was changed on any host."
        )
    binary = _verify(binary_path, sums, BINARY_NAME[arch], where)
    images = []
    for name in image_names(arch):
        if (folder / name).is_file():
            images.append(_verify(folder / name, sums, name, where))
            break  # one archive per architecture: the first of .tar.zst, .tar.gz, .tar
    return K3sRelease(version, arch, binary, tuple(images))


Fetcher = Callable[[str, Path], None]


def _urllib_fetch(url: str, dest: Path, timeout: float = 30.0) -> None:
    request = urllib.request.Request(url, headers={"User-Agent": "homecloud"})
    with urllib.request.urlopen(request, timeout=timeout) as response, open(dest, "wb") as out:
        shutil.copyfileobj(response, out, 1 << 20)


def from_download(download_dir: str | os.PathLike, version: str, arch: str, fetch: Fetcher | None = None) -> K3sRelease:
    """
    The release in the controller cache `download_dir/<version>/`, downloading what is
    missing or fails its checksum. The checksum file is always fetched fresh when the binary
    has to be downloaded, and a binary is only moved into the cache once it matches.
    """
    fetch = fetch or _urllib_fetch
    cache = Path(os.path.expanduser(str(download_dir))) / version
    name = BINARY_NAME[arch]
    sum_name = checksum_names(arch)[0]
    base = f"{RELEASES_URL}/{urllib.parse.quote(version)}"
    binary_path = cache / name
    sum_path = cache / sum_name
    if binary_path.is_file() and sum_path.is_file():
        sums = parse_sha256sums(sum_path.read_text(encoding="utf-8", errors="replace"))
        if sums.get(name) and sha256_of(binary_path) == sums[name]:
            return K3sRelease(version, arch, Artifact(binary_path, sums[name]))
    cache.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=cache, prefix=".download-") as tmp:
        tmp_sum = Path(tmp) / sum_name
        tmp_bin = Path(tmp) / name
        url = f"{base}/{sum_name}"
        try:
            fetch(url, tmp_sum)
            sums = parse_sha256sums(tmp_sum.read_text(encoding="utf-8", errors="replace"))
            if name not in sums:
                raise K3sSourceError(f"{url} lists no `{name}`: is {version} a real k3s release?")
            url = f"{base}/{name}"
            fetch(url, tmp_bin)
        except K3sSourceError:
            raise
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            reason = getattr(e, "reason", None) or e
            raise K3sSourceError(f"downloading {url} failed ({reason}).\n" + source_help(version)) from None
        artifact = _verify(tmp_bin, sums, name, f"download of {base}/{name}")
        os.chmod(tmp_bin, 0o755)
        os.replace(tmp_sum, sum_path)
        os.replace(tmp_bin, binary_path)
    return K3sRelease(version, arch, Artifact(binary_path, artifact.sha256))


def resolve(
    install: str,
    version: str,
    arch: str | None,
    download_dir: str | None = None,
    airgap_dir: str | None = None,
    fetch: Fetcher | None = None,
    cache: dict | None = None,
) -> K3sRelease:
    """
    The verified release for one node architecture, by k3s_install. `cache` (a dict kept on
    the pyinfra state by the deploy) makes it once per (install, version, arch) and run.
    """
    if arch not in BINARY_NAME:
        raise K3sSourceError(
            f"k3s has no release for this node's architecture ({arch!r}); homecloud supports "
            f"{', '.join(BINARY_NAME)}. Nothing was changed on any host."
        )
    key = (install, version, arch, str(download_dir), str(airgap_dir))
    if cache is not None and key in cache:
        result = cache[key]
        if isinstance(result, Exception):
            raise result
        return result
    try:
        if install == "airgap":
            if not airgap_dir:
                raise K3sSourceError('k3s_install="airgap" but k3s_airgap_dir is not set.\n' + source_help(version))
            result = from_airgap(airgap_dir, version, arch)
        elif install == "download":
            result = from_download(download_dir or "~/.cache/homecloud/k3s", version, arch, fetch=fetch)
        else:
            raise K3sSourceError(f"k3s_install must be download, airgap or off, not {install!r}")
    except K3sSourceError as e:
        if cache is not None:
            cache[key] = e
        raise
    if cache is not None:
        cache[key] = result
    return result
