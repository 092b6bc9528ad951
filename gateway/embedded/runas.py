"""Running PostgreSQL's binaries as a non-root user when polegw runs as root.

PostgreSQL refuses to run as root. The server then runs in a user namespace
(`unshare --user --map-user=nobody`): nothing on the system changes, files stay
owned by root, and it works under 0700 parents such as /root. Where user
namespaces are not allowed (e.g. Docker's default seccomp profile), it runs as
the system user `polegw-pg`, created on first use (and logged).
"""

from __future__ import annotations

import contextlib
import functools
import logging
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from gateway.errors import EmbeddedServiceError

log = logging.getLogger(__name__)

SERVICE_USER = "polegw-pg"


@dataclass(frozen=True, slots=True)
class RunAs:
    """How to run the PostgreSQL binaries so that they are not root."""

    prefix: list[str] = field(default_factory=list)  # argv prefix (unshare …)
    uid: int | None = None  # drop to this user (fallback mode)
    gid: int | None = None

    def popen_kwargs(self) -> dict[str, Any]:
        if self.uid is None:
            return {}
        return {"user": self.uid, "group": self.gid, "extra_groups": []}

    def give(self, path: Path) -> None:
        """As root, make `path` (recursively) owned by the user the server runs as.

        In a user namespace that is root outside, hence the folder stays root's; a
        folder made by the other mode on an earlier run is handed over here too.
        """
        uid = os.geteuid() if self.uid is None else self.uid
        gid = os.getegid() if self.gid is None else self.gid
        if os.geteuid() != 0 or path.stat().st_uid == uid:
            return
        for p in [path, *path.rglob("*")]:
            os.lchown(p, uid, gid)


@functools.cache
def run_as() -> RunAs:
    if os.geteuid() != 0:
        return RunAs()
    return _user_namespace() or _service_user()


def _user_namespace() -> RunAs | None:
    """Run as `nobody` inside a user namespace that maps it to us (root) outside."""
    try:
        nobody = pwd.getpwnam("nobody")  # initdb needs a passwd entry for its uid
    except KeyError:
        return None
    prefix = [
        shutil.which("unshare") or "unshare",
        "--user",
        f"--map-user={nobody.pw_uid}",
        f"--map-group={nobody.pw_gid}",
    ]
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        probe = subprocess.run([*prefix, "true"], capture_output=True, timeout=10, check=False)
        if probe.returncode == 0:
            return RunAs(prefix=prefix)
    return None


def _service_user() -> RunAs:
    """Run as the system user `polegw-pg`, created on first use."""
    try:
        entry = pwd.getpwnam(SERVICE_USER)
    except KeyError:
        log.warning(
            "user namespaces unavailable: creating system user %s to run PostgreSQL", SERVICE_USER
        )
        try:
            subprocess.run(
                [
                    "useradd",
                    "--system",
                    "--user-group",
                    "--no-create-home",
                    "--home-dir",
                    "/nonexistent",
                    "--shell",
                    "/usr/sbin/nologin",
                    SERVICE_USER,
                ],
                check=True,
                capture_output=True,
            )
        except (OSError, subprocess.CalledProcessError) as exc:
            raise EmbeddedServiceError(
                f"PostgreSQL cannot run as root and user {SERVICE_USER} could not be created "
                f"({exc}); create it, or run polegw demo as a normal user"
            ) from exc
        entry = pwd.getpwnam(SERVICE_USER)
    return RunAs(uid=entry.pw_uid, gid=entry.pw_gid)


def unreachable_parent(path: Path, run_as: RunAs) -> Path | None:
    """The first folder above `path` that the server's user cannot enter, if any."""
    if run_as.uid is None:
        return None
    for folder in reversed(path.parents):
        st = folder.stat()
        if st.st_uid == run_as.uid:
            bit = 0o100
        elif st.st_gid == run_as.gid:
            bit = 0o010
        else:
            bit = 0o001
        if not st.st_mode & bit:
            return folder
    return None
