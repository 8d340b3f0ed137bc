"""JSON-RPC 2.0 dispatch: requests and batches in, responses out, errors by stable code."""

from __future__ import annotations

import json
import logging
from typing import Any

from pydantic import ValidationError

from multiconsole.agent.api import METHODS
from multiconsole.agent.vms import AgentError, VmManager
from multiconsole.wire.errors import MESSAGES, ErrorCode

log = logging.getLogger(__name__)
# Deeper documents are refused before any method sees them (vmParams need about 5).
MAX_DEPTH = 64


def _error(req_id: Any, code: ErrorCode, message: str | None = None, data: Any = None) -> dict:
    err: dict[str, Any] = {"code": int(code), "message": message or MESSAGES[code]}
    if data is not None:
        err["data"] = data
    return {"jsonrpc": "2.0", "id": req_id, "error": err}


def _validation_error(err: ValidationError) -> tuple[str, dict]:
    first = err.errors()[0]
    field = ".".join(str(p) for p in first["loc"]) or "params"
    reason = first["msg"]
    return f"{field}: {reason}", {"field": field, "reason": reason}


def _valid_id(value: Any) -> bool:
    """JSON-RPC ids are strings, numbers or null."""
    return value is None or (isinstance(value, str | int | float) and not isinstance(value, bool))


def _one(manager: VmManager, req: Any) -> dict | None:
    req_id = req.get("id") if isinstance(req, dict) else None
    if not _valid_id(req_id):
        return _error(None, ErrorCode.INVALID_REQUEST, "id must be a string, a number or null")
    if not isinstance(req, dict) or req.get("jsonrpc") != "2.0" or not isinstance(req.get("method"), str):
        return _error(req_id, ErrorCode.INVALID_REQUEST)
    notification = "id" not in req
    reply = _call(manager, req, req_id)
    # A notification gets no reply, not even an error (JSON-RPC 2.0, section 4.1).
    return None if notification else reply


def _call(manager: VmManager, req: dict, req_id: Any) -> dict:
    name = req["method"]
    method = METHODS.get(name)
    if method is None:
        return _error(req_id, ErrorCode.METHOD_NOT_FOUND, f"no such method: {name}")
    raw = req.get("params", {})
    if isinstance(raw, list):
        # By position, in the order the model declares its fields.
        names = list(method.params.model_fields)
        if len(raw) > len(names):
            return _error(req_id, ErrorCode.INVALID_PARAMS, f"{name} takes at most {len(names)} parameters")
        raw = dict(zip(names, raw, strict=False))
    if not isinstance(raw, dict):
        return _error(req_id, ErrorCode.INVALID_PARAMS, "params must be an object or a list")
    try:
        params = method.params.model_validate(raw)
        result = method.call(manager, params)
    except ValidationError as err:
        message, data = _validation_error(err)
        return _error(req_id, ErrorCode.INVALID_PARAMS, message, data)
    except AgentError as err:
        return _error(req_id, err.code, err.message, err.data)
    except Exception:
        # Never echo the request: it may hold a console password.
        log.exception("method failed method=%s", name)
        return _error(req_id, ErrorCode.INTERNAL_ERROR, f"{name} failed unexpectedly; see the agent's log")
    return {"jsonrpc": "2.0", "id": req_id, "result": result}


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not JSON")


def _check_document(doc: Any) -> str | None:
    """Why a parsed body cannot be answered, or None: nesting too deep, or a lone
    surrogate (\\ud800) that no UTF-8 reply could carry back."""
    stack = [(doc, 1)]
    while stack:
        value, depth = stack.pop()
        if depth > MAX_DEPTH:
            return f"nested deeper than {MAX_DEPTH} levels"
        if isinstance(value, dict):
            stack.extend((key, depth) for key in value)
            stack.extend((item, depth + 1) for item in value.values())
        elif isinstance(value, list):
            stack.extend((item, depth + 1) for item in value)
        elif isinstance(value, str):
            try:
                value.encode("utf-8")
            except UnicodeEncodeError:
                return "a string holds a lone surrogate: not valid Unicode"
    return None


def handle(manager: VmManager, body: bytes) -> Any:
    """One HTTP body in, the JSON-RPC reply out (None when there is nothing to send)."""
    try:
        # NaN and Infinity are Python's extensions, not JSON.
        req = json.loads(body, parse_constant=_reject_constant)
    except (ValueError, RecursionError):
        return _error(None, ErrorCode.PARSE_ERROR)
    problem = _check_document(req)
    if problem is not None:
        return _error(None, ErrorCode.PARSE_ERROR, f"{MESSAGES[ErrorCode.PARSE_ERROR]}: {problem}")
    if isinstance(req, list):
        if not req:
            return _error(None, ErrorCode.INVALID_REQUEST, "empty batch")
        replies = [r for r in (_one(manager, item) for item in req) if r is not None]
        return replies or None
    return _one(manager, req)
