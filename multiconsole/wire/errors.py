"""JSON-RPC error codes of the agent. Stable: engines match on the numbers."""

from enum import IntEnum


class ErrorCode(IntEnum):
    PARSE_ERROR = -32700
    INVALID_REQUEST = -32600
    METHOD_NOT_FOUND = -32601
    INVALID_PARAMS = -32602
    INTERNAL_ERROR = -32603
    NO_SUCH_VM = 1
    VM_EXISTS = 4
    LIBVIRT_FAILURE = 100
    NO_SUCH_DEVICE = 101
    VM_NOT_RUNNING = 102
    CONSOLE_IN_USE = 103
    CERTIFICATE_REFUSED = 110
    STORAGE_FAILURE = 120


MESSAGES = {
    ErrorCode.PARSE_ERROR: "the request is not valid JSON",
    ErrorCode.INVALID_REQUEST: "not a JSON-RPC 2.0 request",
    ErrorCode.METHOD_NOT_FOUND: "no such method",
    ErrorCode.INVALID_PARAMS: "invalid parameters",
    ErrorCode.INTERNAL_ERROR: "internal error",
    ErrorCode.NO_SUCH_VM: "virtual machine does not exist",
    ErrorCode.VM_EXISTS: "virtual machine already exists",
    ErrorCode.LIBVIRT_FAILURE: "libvirt failed",
    ErrorCode.NO_SUCH_DEVICE: "the VM has no such device",
    ErrorCode.VM_NOT_RUNNING: "the VM is not running",
    ErrorCode.CONSOLE_IN_USE: "a client is connected to the console",
    ErrorCode.CERTIFICATE_REFUSED: "the host cannot make or install that certificate",
    ErrorCode.STORAGE_FAILURE: "the host cannot provide the VM's images or disks",
}
