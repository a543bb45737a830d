"""The package's build backend: setuptools', and a wheel that ships the kernels compiled.

``pip install bce-cli`` from this wheel gives a machine the compiled kernels from
its first call (``bce_cli._prebuilt``): building the wheel compiles every form for
x86-64-v3 (AVX2) and x86-64-v4 (AVX-512), one process per level, a few minutes on
two cores, and adds the objects to the wheel.  The objects are built from the
sources being packaged, never kept in the repository.

Left out (a plain wheel, which compiles on first use as before) where the build
runs off x86-64 Linux, or when ``BCE_PREBUILT=none`` is set or
``--config-settings prebuilt=none`` is given.  Editable installs and source
distributions are setuptools' own.
"""

from __future__ import annotations

import base64
import hashlib
import os
import platform
import sys
import tempfile
import zipfile

from setuptools import build_meta as _setuptools
from setuptools.build_meta import (  # noqa: F401  (the hooks left as setuptools has them)
    build_editable,
    build_sdist,
    get_requires_for_build_editable,
    get_requires_for_build_sdist,
    prepare_metadata_for_build_editable,
    prepare_metadata_for_build_wheel,
)

# What compiling the kernels needs in the build environment.
COMPILE_REQUIRES = ["numba>=0.60", "numpy>=1.26"]
PACKAGE = "bce_cli"


def _wanted(config_settings) -> bool:
    setting = (config_settings or {}).get("prebuilt") or os.environ.get("BCE_PREBUILT", "")
    return (setting != "none" and sys.platform.startswith("linux")
            and platform.machine() == "x86_64")


def get_requires_for_build_wheel(config_settings=None):
    extra = COMPILE_REQUIRES if _wanted(config_settings) else []
    return [*_setuptools.get_requires_for_build_wheel(config_settings), *extra]


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    name = _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)
    if _wanted(config_settings):
        from . import _prebuilt

        with tempfile.TemporaryDirectory(prefix="bce-wheel-") as tmp:
            files = _prebuilt.build(tmp, report=lambda line: print(line, file=sys.stderr))
            add_to_wheel(os.path.join(wheel_directory, name),
                         {f"{PACKAGE}/_prebuilt/{os.path.relpath(path, tmp)}": path
                          for path in files})
    return name


def _record_hash(data: bytes) -> str:
    digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
    return "sha256=" + digest.decode("ascii")


def add_to_wheel(wheel: str, files: dict[str, str]) -> None:
    """Add ``files`` (name in the wheel -> path here) to ``wheel``, listed in its RECORD."""
    tmp = wheel + ".tmp"
    with zipfile.ZipFile(wheel) as src, zipfile.ZipFile(tmp, "w", zipfile.ZIP_DEFLATED) as dst:
        record_name = next(n for n in src.namelist() if n.endswith(".dist-info/RECORD"))
        for info in src.infolist():
            if info.filename != record_name:
                dst.writestr(info, src.read(info))
        lines = src.read(record_name).decode("utf-8").splitlines()
        lines = [line for line in lines if line and not line.startswith(record_name + ",")]
        for arcname, path in sorted(files.items()):
            with open(path, "rb") as fh:
                data = fh.read()
            dst.writestr(arcname, data)
            lines.append(f"{arcname},{_record_hash(data)},{len(data)}")
        lines.append(f"{record_name},,")
        dst.writestr(record_name, "\n".join(lines) + "\n")
    os.replace(tmp, wheel)
