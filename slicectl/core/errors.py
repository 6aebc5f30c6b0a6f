"""The one exception root of slicectl and its branches.

Every message is built in the constructor and fits on one line: it names the thing, what
was expected and what was found. The CLI prints ``str(err)`` and exits with ``exit_code``.
"""

from __future__ import annotations


class SlicectlError(Exception):
    """Root of every error slicectl raises on purpose."""

    exit_code = 1
    #: Stable code used on the XML-RPC wire (``Fault.faultCode``).
    fault_code = 100

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class ValidationError(SlicectlError):
    """Bad input: a field did not have the expected type or value."""

    exit_code = 2
    fault_code = 101

    def __init__(self, field: str, expected: str, found: object, *, as_text: bool = False) -> None:
        self.field = field
        self.expected = expected
        self.found = found
        shown = str(found) if as_text else repr(found)
        super().__init__(f"{field}: expected {expected}, found {shown}")


class UsageError(SlicectlError):
    """Bad input that is not a single field (a missing file, a wrong combination)."""

    exit_code = 2
    fault_code = 102


class AdmissionError(SlicectlError):
    """The node cannot honour a request (resources, ports, time windows)."""

    exit_code = 3
    fault_code = 103


class NotFoundError(SlicectlError):
    """A slice, sliver or rcap that does not exist (or no longer exists)."""

    exit_code = 4
    fault_code = 104


class StateError(SlicectlError):
    """The object exists but is not in a state that allows the operation."""

    exit_code = 5
    fault_code = 105


class PermissionDenied(SlicectlError):
    """The caller may not do this."""

    exit_code = 6
    fault_code = 106


class EngineError(SlicectlError):
    """The Docker engine, the kernel or a host tool failed; the message says what to do."""

    exit_code = 7
    fault_code = 107


class ConnectionFailed(SlicectlError):
    """The node manager (or another daemon) could not be reached."""

    exit_code = 8
    fault_code = 108


FAULT_CLASSES: dict[int, type[SlicectlError]] = {
    cls.fault_code: cls
    for cls in (
        SlicectlError,
        ValidationError,
        UsageError,
        AdmissionError,
        NotFoundError,
        StateError,
        PermissionDenied,
        EngineError,
        ConnectionFailed,
    )
}


def from_fault(code: int, message: str) -> SlicectlError:
    """Rebuild the error a server raised from its XML-RPC fault code and message."""
    cls = FAULT_CLASSES.get(code, SlicectlError)
    err = SlicectlError.__new__(cls)
    SlicectlError.__init__(err, message)
    return err
