"""PLC faults: each a :class:`SlicectlError` carrying PLCAPI's fault code.

Messages keep PLCAPI's forms: a prefix naming the kind ("Invalid argument: ...") and one
line naming the field, what was expected and what came.
"""

from __future__ import annotations

from ..core.errors import SlicectlError


class PLCFault(SlicectlError):
    """Root of the faults PLC returns on the wire; ``fault_code`` is PLCAPI's."""

    fault_code = 111
    prefix = "Internal API error"

    def __init__(self, detail: str) -> None:
        super().__init__(f"{self.prefix}: {detail}")
        self.detail = detail


class InvalidMethod(PLCFault):
    fault_code = 100
    prefix = "Invalid method"


class WrongArgCount(PLCFault):
    fault_code = 101
    prefix = "Invalid argument count"


class InvalidArgument(PLCFault):
    fault_code = 102
    prefix = "Invalid argument"
    exit_code = 2


class AuthFailure(PLCFault):
    fault_code = 103
    prefix = "Failed to authenticate call"


class DBError(PLCFault):
    fault_code = 106
    prefix = "Database error"


class PermissionDenied(PLCFault):
    fault_code = 108
    prefix = "Permission denied"
    exit_code = 6


class NotImplementedFault(PLCFault):
    fault_code = 109
    prefix = "Not fully implemented"


class InternalError(PLCFault):
    fault_code = 111
    prefix = "Internal API error"


def xmlrpc_type(value: object) -> str:
    """The XML-RPC name of a value's type, as fault messages show it."""
    if value is None:
        return "nil"
    if isinstance(value, bool):
        return "boolean"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "double"
    if isinstance(value, str):
        return "string"
    if isinstance(value, dict):
        return "struct"
    if isinstance(value, list | tuple):
        return "array"
    return type(value).__name__


def bad_value(field: str, expected: str, value: object) -> InvalidArgument:
    """``Invalid argument: Invalid X value: expected int, got string``."""
    return InvalidArgument(f"Invalid {field} value: expected {expected}, got {xmlrpc_type(value)}")
