"""The one exception tree of gsched. Foreign errors are translated at the boundary with ``raise ... from``.

    GschedError                  every error gsched raises on purpose
    ├── InputError               bad input from a user (exit 2)
    │   ├── JobFileError         a job file: names the file and the field or line
    │   └── ConfigError          a config file: names the file and the key
    ├── DaemonUnavailable        no daemon answers on the socket (exit 3)
    ├── NotFound                 no such job (exit 4)
    ├── PermissionDenied         the caller may not do this (exit 5)
    ├── Conflict                 the job's state does not allow it (exit 6)
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
    def __init__(self, source: str, where: str, message: str) -> None:
        self.source, self.where, self.message = source, where, message
        super().__init__(f"{source}: {where}: {message}" if where else f"{source}: {message}")


class ConfigError(InputError):
    pass


class DaemonUnavailable(GschedError):
    exit_code = 3


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
HTTP_STATUS: dict[type[GschedError], int] = {InputError: 400, PermissionDenied: 403, NotFound: 404, Conflict: 409}
