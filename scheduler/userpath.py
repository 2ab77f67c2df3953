"""User-named paths are looked at with the user's rights, never root's.

A root daemon that resolved a job's workdir itself would tell any user which paths exist and follow
symlinks into directories the user cannot enter. So the check runs in a short child process that has
dropped to the owner (and no supplementary groups, as the job itself will run), and reports back the
resolved directory or the reason it is refused.
"""

from __future__ import annotations

import json
import os
import pwd
import subprocess
import sys
from pathlib import Path
from typing import Any

CHECK_TIMEOUT_S = 10.0

# Stdlib only and isolated (-I -S): nothing from the user's environment or directories is imported.
_CHECK = """\
import json, os, sys
path = sys.argv[1]
try:
    resolved = os.path.realpath(path, strict=True)
    if not os.path.isdir(resolved):
        out = {"error": "%s is not a directory" % resolved}
    else:
        os.chdir(resolved)
        os.listdir(".")
        out = {"path": resolved}
except OSError as exc:
    out = {"error": "%s: %s" % (path if len(path) < 200 else path[:200] + "...", exc.strerror or exc)}
except Exception as exc:
    out = {"error": "%s: %s" % (path[:200], exc)}
print(json.dumps(out))
"""


# `command -v` as the owner: the first executable regular file named NAME in PATH's directories.
_WHICH = """\
import json, os, sys
name, path = sys.argv[1], sys.argv[2]
found = None
for d in path.split(os.pathsep):
    candidate = os.path.join(d or ".", name)
    if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
        found = candidate if os.path.isabs(candidate) else os.path.abspath(candidate)
        break
print(json.dumps({"path": found}))
"""


def primary_gid(uid: int, fallback: int) -> int:
    try:
        return pwd.getpwuid(uid).pw_gid
    except KeyError:
        return fallback


def acting_ids(owner_uid: int, fallback_gid: int) -> tuple[int, int]:
    """The uid and gid that act for a job's owner: the owner under a root daemon, else the daemon's own user."""
    if os.geteuid() == 0:
        return owner_uid, primary_gid(owner_uid, fallback_gid)
    return os.geteuid(), os.getegid()


def _as_owner(uid: int, gid: int, script: str, args: list[str], what: str, cwd: str = "/") -> dict[str, Any]:
    """Run one of the stdlib-only checks above as ``uid``:``gid`` (no supplementary groups, as the job will run)."""
    ids: dict[str, Any] = {"user": uid, "group": gid, "extra_groups": []} if uid != os.geteuid() else {}
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", script, *args], capture_output=True, text=True,
                              timeout=CHECK_TIMEOUT_S, cwd=cwd, env={"LANG": "C.UTF-8"}, **ids)
    except subprocess.TimeoutExpired:
        raise ValueError(f"{what}: checking it as uid {uid} took over {CHECK_TIMEOUT_S:g} s") from None
    except OSError as exc:
        raise ValueError(f"cannot check {what} as uid {uid}: {exc}") from None
    try:
        out = json.loads(done.stdout)
    except ValueError:
        raise ValueError(f"cannot check {what} as uid {uid}: {done.stderr.strip()[-200:]}") from None
    return out if isinstance(out, dict) else {}


def owner_which(uid: int, gid: int, name: str, path: str, cwd: str) -> str | None:
    """Where ``name`` (a command without a slash) is found on ``path`` as the owner would find it, or None."""
    if "\0" in name or "\0" in path:
        raise ValueError("must not contain a NUL character")
    if uid == os.geteuid():  # the daemon's own user: no rights to drop
        import shutil

        local = shutil.which(name, path=path)
        return os.path.join(cwd, local) if local and not os.path.isabs(local) else local
    found = _as_owner(uid, gid, _WHICH, [name, path], name[:200], cwd)["path"]
    return found if isinstance(found, str) else None


def owner_dir(uid: int, gid: int, path: Path) -> Path:
    """``path`` resolved as ``uid``:``gid`` would see it; ValueError naming the reason otherwise."""
    text = str(path)
    if "\0" in text:
        raise ValueError("must not contain a NUL character")
    if not path.is_absolute():
        raise ValueError(f"{text[:200]} is not an absolute path")
    if uid == os.geteuid():  # the daemon's own user (root's jobs, or a per-user daemon): no rights to drop
        from scheduler.jobfile import local_dir

        return local_dir(path)
    out = _as_owner(uid, gid, _CHECK, [text], text[:200])
    if "error" in out:
        raise ValueError(str(out["error"]))
    return Path(out["path"])
