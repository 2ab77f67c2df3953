"""The one exception tree of gsched. Foreign errors are translated at the boundary with ``raise ... from``.

    GschedError                  every error gsched raises on purpose
    ├── InputError               bad input from a user (exit 2)
    │   ├── JobFileError         a job file: names the file and the field or line
    │   └── ConfigError          a config file: names the file and the key
    ├── DaemonUnavailable        no daemon answers on the socket (exit 3)
    │   └── DaemonBusy           it answers, but is saturated: try again (exit 3)
    ├── NotFound                 no such job (exit 4)
    ├── PermissionDenied         the caller may not do this (exit 5)
    ├── Conflict                 the job's state does not allow it (exit 6)
    ├── LimitExceeded            a [limits] key refuses it (exit 7)
    ├── StoreError               the database refused (schema too new, corrupt file)
    ├── DeviceError              NVML or another device API failed
    └── ProviderError            a forecast provider failed
"""

from __future__ import annotations


class GschedError(Exception):
    exit_code = 1


class InputError(GschedError):
    exit_code = 2


class JobFileError(InputError):
    """Every error of one job file: a line each, naming the file and the field."""

    def __init__(self, source: str, where: str, message: str, more: list[tuple[str, str]] | None = None) -> None:
        self.source, self.where, self.message = source, where, message
        self.errors = [(where, message), *(more or [])]
        super().__init__("\n".join(f"{source}: {w}: {m}" if w else f"{source}: {m}" for w, m in self.errors))


class ConfigError(InputError):
    pass


class DaemonUnavailable(GschedError):
    exit_code = 3


class DaemonBusy(DaemonUnavailable):
    pass


class LimitExceeded(GschedError):
    exit_code = 7


class NotFound(GschedError):
    exit_code = 4


class PermissionDenied(GschedError):
    exit_code = 5


class Conflict(GschedError):
    exit_code = 6


class StoreError(GschedError):
    pass


class DeviceError(GschedError):
    pass


class ProviderError(GschedError):
    pass


# How the daemon's API carries errors to the client: one table, read in both directions.
HTTP_STATUS: dict[type[GschedError], int] = {InputError: 400, PermissionDenied: 403, NotFound: 404, Conflict: 409,
                                             LimitExceeded: 429, DaemonBusy: 503}
