"""A client of the engine's REST API (/api/v1): where the engine is, who we are, its errors.

Where to connect and as whom is resolved field by field, first found wins:
flags (the arguments given here) > environment (MULTICONSOLE_URL, MULTICONSOLE_USER,
MULTICONSOLE_PASSWORD) > the settings file (`settings_path()`, written by `save_settings`,
e.g. by the demo) > defaults (https://127.0.0.1:8443, admin@internal, no password).

The settings file's user and password belong to the file's engine: they are used only when
the resolved URL is the file's URL (and its password only for the file's user), so pointing
`--engine` elsewhere never sends those credentials to another server.

An https:// engine's certificate is always verified. Against `--ca FILE` / $MULTICONSOLE_CA
alone when given; else against the system's CAs plus the engine CAs found here: the settings
file's `ca` (for its URL), `~/.config/multiconsole/ca.pem` (which `multiconsole engine` and
the demo write) and `<data dir>/pki/ca-cert.pem` (an engine on this machine).
"""

from __future__ import annotations

import json
import os
import ssl
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

import httpx

from multiconsole.paths import data_dir

DEFAULT_URL = "https://127.0.0.1:8443"
DEFAULT_USER = "admin@internal"
ENV_URL = "MULTICONSOLE_URL"
ENV_USER = "MULTICONSOLE_USER"
ENV_PASSWORD = "MULTICONSOLE_PASSWORD"
# A token from POST /api/v1/login, used instead of the password when set.
ENV_TOKEN = "MULTICONSOLE_TOKEN"
# A CA certificate (PEM) to check the engine's certificate with, instead of any other.
ENV_CA = "MULTICONSOLE_CA"
API_PREFIX = "/api/v1"
# Starting a VM waits for the host's agent (the engine allows it 30 s).
TIMEOUT = 60.0


class ClientError(Exception):
    """Anything that kept a request from getting an answer; `exit_code` for the CLI."""

    exit_code = 1


class EngineApiError(ClientError):
    """The engine refused the request: its status, the field at fault and the reason."""

    def __init__(self, status: int, field: str | None, reason: str, message: str | None = None):
        self.status = status
        self.field = field
        self.reason = reason
        self.message = message or (f"{field}: {reason}" if field else reason)
        super().__init__(self.message)


class EngineUnreachable(ClientError):
    """No answer from the engine at `url` (refused, timed out, not a valid URL ...)."""

    exit_code = 2

    def __init__(self, url: str, detail: str):
        self.url = url
        self.detail = detail
        super().__init__(f"cannot reach the engine at {url}: {detail}")


class CertificateError(EngineUnreachable):
    """The engine's certificate does not verify against the CAs we trust."""


class SettingsError(ClientError):
    """The settings file exists but cannot be read."""


# --- settings --------------------------------------------------------------------------


def settings_path() -> Path:
    """$XDG_CONFIG_HOME/multiconsole/cli.json, by default ~/.config/multiconsole/cli.json."""
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "multiconsole" / "cli.json"


def ca_path() -> Path:
    """The engine CAs the CLI trusts without flags: ~/.config/multiconsole/ca.pem."""
    return settings_path().parent / "ca.pem"


def remember_ca(ca_pem: bytes, path: Path | None = None) -> Path:
    """Add an engine's CA certificate to `ca_path()` (a bundle: other engines' CAs stay)."""
    path = path or ca_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    pem = ca_pem.decode().strip() + "\n"
    try:
        known = path.read_text()
    except FileNotFoundError:
        known = ""
    if pem.strip() in known:
        return path
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".ca.", suffix=".pem")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(known + ("" if not known or known.endswith("\n") else "\n") + pem)
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def save_settings(
    url: str, user: str, password: str, path: Path | None = None, ca: str | Path | None = None
) -> Path:
    """Write where the engine is and how to log in, readable by the owner only (0600);
    `ca`: the file of the CA that issued the engine's certificate."""
    path = path or settings_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    data = {"url": normalize_url(url), "user": user, "password": password}
    if ca:
        data["ca"] = str(ca)
    # mkstemp creates the file 0600 from the start; replace() makes the write atomic.
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".cli.", suffix=".json")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump(data, f, indent=2)
            f.write("\n")
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def load_settings(path: Path | None = None) -> dict[str, str]:
    """The settings file's url, user and password (those present); {} without a file."""
    path = path or settings_path()
    try:
        text = path.read_text()
    except FileNotFoundError:
        return {}
    except OSError as err:
        raise SettingsError(f"cannot read the settings file {path}: {err.strerror or err}") from None
    try:
        data = json.loads(text)
    except ValueError:
        raise SettingsError(f"the settings file {path} is not valid JSON") from None
    if not isinstance(data, dict):
        raise SettingsError(f"the settings file {path} is not a JSON object")
    return {k: data[k] for k in ("url", "user", "password", "ca") if isinstance(data.get(k), str) and data[k]}


def normalize_url(url: str) -> str:
    """`host:port` -> `https://host:port`; no trailing slash nor /api/v1."""
    url = url.strip()
    if "://" not in url:
        url = "https://" + url
    url = url.rstrip("/")
    if url.endswith(API_PREFIX):
        url = url[: -len(API_PREFIX)].rstrip("/")
    return url


@dataclass(frozen=True)
class Connection:
    url: str
    user: str
    password: str | None
    ca: str | None = None  # --ca or $MULTICONSOLE_CA: the only CA the engine is checked against
    saved_ca: str | None = None  # the settings file's CA (for its URL), trusted besides the others


def resolve(
    url: str | None = None,
    user: str | None = None,
    password: str | None = None,
    *,
    ca: str | None = None,
    environ: dict[str, str] | None = None,
    settings: dict[str, str] | None = None,
) -> Connection:
    """Flags > environment > settings file > defaults, as the module's docstring says."""
    env = os.environ if environ is None else environ
    saved = load_settings() if settings is None else settings
    url = normalize_url(url or env.get(ENV_URL) or saved.get("url") or DEFAULT_URL)
    applies = "url" not in saved or normalize_url(saved["url"]) == url
    user = user or env.get(ENV_USER) or (saved.get("user") if applies else None) or DEFAULT_USER
    if not password:
        password = env.get(ENV_PASSWORD) or None
    if password is None and applies and saved.get("user", user) == user:
        password = saved.get("password")
    ca = ca or env.get(ENV_CA) or None
    return Connection(url, user, password, ca, saved.get("ca") if applies else None)


def trusted_cas(explicit: str | None = None, extra: str | None = None) -> ssl.SSLContext:
    """How the engine's certificate is checked (see the module's docstring)."""
    if explicit:
        try:
            return ssl.create_default_context(cafile=explicit)
        except (OSError, ssl.SSLError) as err:
            raise SettingsError(
                f"cannot use {explicit} as the engine's CA: {getattr(err, 'strerror', None) or err}"
            ) from None
    import certifi

    context = ssl.create_default_context(cafile=certifi.where())
    for candidate in [*([Path(extra)] if extra else []), *_found_cas()]:
        try:
            context.load_verify_locations(cafile=str(candidate))
        except (OSError, ssl.SSLError):
            continue  # unreadable (e.g. root's): the others may still do
    return context


def _found_cas() -> list[Path]:
    local_ca = data_dir(create=False) / "pki" / "ca-cert.pem"  # an engine on this machine
    return [p for p in (ca_path(), local_ca) if p.is_file()]


# --- the client ------------------------------------------------------------------------


def path(*parts: str) -> str:
    """An API path from its parts, each quoted: path("vms", name, "start")."""
    return "/" + "/".join(quote(p, safe="") for p in parts)


class EngineClient:
    """JSON in, JSON out; every engine error an EngineApiError, every failure to reach it
    an EngineUnreachable."""

    def __init__(
        self,
        url: str = DEFAULT_URL,
        user: str = DEFAULT_USER,
        password: str | None = None,
        *,
        timeout: float = TIMEOUT,
        transport: httpx.BaseTransport | None = None,
        token: str | None = None,
        ca: str | None = None,
        saved_ca: str | None = None,
    ):
        self.url = normalize_url(url)
        self.user = user
        self.password = password
        self.token = token
        self.ca = ca
        verify = trusted_cas(ca, saved_ca) if self.url.startswith("https://") else True
        self._http = httpx.Client(timeout=timeout, transport=transport, auth=self._auth(), verify=verify)

    @classmethod
    def resolved(
        cls,
        url: str | None = None,
        user: str | None = None,
        password: str | None = None,
        ca: str | None = None,
        **kw: Any,
    ) -> EngineClient:
        """A client for the engine that flags, environment and settings file point to."""
        conn = resolve(url, user, password, ca=ca)
        if not password:  # a --password flag wins over a token from the environment
            kw.setdefault("token", os.environ.get(ENV_TOKEN) or None)
        return cls(conn.url, conn.user, conn.password, ca=conn.ca, saved_ca=conn.saved_ca, **kw)

    def _auth(self) -> httpx.Auth | None:
        """How the client proves who it is: the single place to change (a login token
        as `Authorization: Bearer`, else HTTP Basic)."""
        if self.token:
            return _BearerAuth(self.token)
        if self.password is None:
            return None
        return httpx.BasicAuth(self.user, self.password)

    def request(
        self, method: str, api_path: str, body: Any = None, timeout: float | None = None, **raw: Any
    ) -> Any:
        """The engine's JSON answer (None for 204 No Content); `timeout` for slow calls (typing).
        `raw`: httpx options for a body that is not JSON (content=, params=, headers=, timeout=)."""
        try:
            if raw:
                if timeout is not None:
                    raw["timeout"] = timeout
                r = self._http.request(method, self.url + API_PREFIX + api_path, **raw)
            else:
                r = self._http.request(
                    method,
                    self.url + API_PREFIX + api_path,
                    json=body,
                    timeout=httpx.USE_CLIENT_DEFAULT if timeout is None else timeout,
                )
        except httpx.InvalidURL as err:
            raise EngineUnreachable(self.url, f"not a valid URL ({err})") from None
        except httpx.TimeoutException:
            raise EngineUnreachable(self.url, "no answer in time") from None
        except httpx.TransportError as err:
            if _bad_certificate(err):
                raise CertificateError(self.url, self._certificate_hint(err)) from None
            detail = _describe(err)
            if self.url.startswith("http://") and isinstance(
                err, httpx.RemoteProtocolError | httpx.ReadError
            ):
                # What a TLS port does to a plain HTTP request: it hangs up.
                detail += f" (does it serve HTTPS? try {'https://' + self.url.removeprefix('http://')})"
            raise EngineUnreachable(self.url, detail) from None
        if r.status_code >= 400:
            raise self._error(r)
        if r.status_code == 204 or not r.content:
            return None
        try:
            return r.json()
        except ValueError:
            raise EngineApiError(
                r.status_code, None, f"the answer is not JSON: is {self.url} a multiconsole engine?"
            ) from None

    def _certificate_hint(self, err: Exception) -> str:
        why = _describe(err)
        why = why.split("certificate verify failed:", 1)[-1].split("(_ssl.c", 1)[0].strip() or why
        against = f"the CA in {self.ca}" if self.ca else "the CAs this client trusts"
        return (
            f"its certificate does not verify against {against} ({why}); get the engine's CA "
            f"({self.url}{API_PREFIX}/pki/ca.pem, or <data dir>/pki/ca-cert.pem on the engine's machine), "
            f"check its fingerprint with the engine's admin, and pass --ca FILE or set ${ENV_CA}, "
            f"or put it in {ca_path()}"
        )

    def _error(self, r: httpx.Response) -> EngineApiError:
        try:
            err = r.json()["error"]
            return EngineApiError(
                int(err.get("status") or r.status_code),
                err.get("field"),
                str(err["reason"]),
                err.get("message"),
            )
        except (ValueError, KeyError, TypeError, AttributeError):
            return EngineApiError(
                r.status_code,
                None,
                f"HTTP {r.status_code} {r.reason_phrase}: is {self.url} a multiconsole engine?",
            )

    def get(self, api_path: str) -> Any:
        return self.request("GET", api_path)

    def upload_image(
        self,
        file: Path,
        name: str,
        fmt: str | None = None,
        progress: Callable[[int], None] | None = None,
        chunk: int = 1 << 20,
    ) -> Any:
        """POST /images with the file as the body, streamed (`progress(bytes)` after each chunk)."""
        size = file.stat().st_size

        def body() -> Iterator[bytes]:
            with file.open("rb") as f:
                while data := f.read(chunk):
                    yield data
                    if progress is not None:
                        progress(len(data))

        params = {"name": name, **({"format": fmt} if fmt else {})}
        headers = {"Content-Type": "application/octet-stream", "Content-Length": str(size)}
        timeout = httpx.Timeout(TIMEOUT, read=max(TIMEOUT, 600.0))
        return self.request(
            "POST", "/images", content=body(), params=params, headers=headers, timeout=timeout
        )

    def post(self, api_path: str, body: Any = None, timeout: float | None = None) -> Any:
        return self.request("POST", api_path, body, timeout)

    def patch(self, api_path: str, body: Any) -> Any:
        return self.request("PATCH", api_path, body)

    def delete(self, api_path: str) -> Any:
        return self.request("DELETE", api_path)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> EngineClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class _BearerAuth(httpx.Auth):
    def __init__(self, token: str):
        self._header = f"Bearer {token}"

    def auth_flow(self, request: httpx.Request):
        request.headers["Authorization"] = self._header
        yield request


def _bad_certificate(err: BaseException) -> bool:
    while err is not None:
        if isinstance(err, ssl.SSLCertVerificationError):
            return True
        if "CERTIFICATE_VERIFY_FAILED" in str(err):
            return True
        err = err.__cause__ or err.__context__
    return False


def _describe(err: Exception) -> str:
    text = str(err).strip() or type(err).__name__
    # "[Errno 111] Connection refused" -> "connection refused"
    if text.startswith("[Errno") and "]" in text:
        text = text.split("]", 1)[1].strip()
        text = text[:1].lower() + text[1:]
    return text.splitlines()[0][:200]
