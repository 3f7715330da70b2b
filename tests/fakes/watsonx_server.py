"""A loopback server of IBM watsonx.ai's REST shape, over TLS, for the real ibm-watsonx-ai and langchain-ibm.

It serves what `make_chat_model` (provider watsonx) reaches, at the paths and in the shapes of IBM Cloud::

    POST /identity/token                 IAM: form-encoded grant_type=urn:ibm:params:oauth:grant-type:apikey
    GET  /v2/projects/{id}               the platform API the client checks the project against
    GET  /ml/v1/foundation_model_specs   the model list the client validates `model_id` against
    POST /ml/v1/text/chat?version=...    chat, with tools, tool_choice / tool_choice_option, response_format

The client refuses plain http and IAM at any host but IBM's unless given `auth_url` and `platform_url`, so the
server speaks https with a certificate from a CA it makes for itself (`ca_file`, handed to the client as its
CA bundle: verification stays on). Like the service, it answers 401 to a missing, unknown or expired bearer
token and 400 to a request the API would refuse, with watsonx's error body (`errors`, `trace`, `status_code`).

Chat answers come from a script (`reply` of tests/fakes/openai_server.py; a status other than 200 answers with
that status) or, given `backend` (an OpenAI-compatible base_url, e.g. the local llama.cpp server of
evals/llm_local.py), from a real model: the request is translated to /chat/completions and the answer back.
`requests` records every request as (method, path, query, headers, body); `usage_total` sums the tokens
of the answers' `usage`.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import hmac
import ipaddress
import json
import secrets
import ssl
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

from tests.fakes.http import LoopbackServer, answer_json

GRANT_TYPE = "urn:ibm:params:oauth:grant-type:apikey"
TOKEN_LIFETIME_S = 3600
BACKEND_TIMEOUT_S = 600.0
CHAT_FIELDS = frozenset(
    {
        "model_id",
        "messages",
        "project_id",
        "space_id",
        "tools",
        "tool_choice",
        "tool_choice_option",
        "context",
        "crypto",
        "frequency_penalty",
        "logprobs",
        "top_logprobs",
        "presence_penalty",
        "response_format",
        "temperature",
        "max_tokens",
        "max_completion_tokens",
        "time_limit",
        "top_p",
        "n",
        "logit_bias",
        "seed",
        "stop",
        "guided_choice",
        "guided_regex",
        "guided_grammar",
        "guided_json",
        "chat_template_kwargs",
        "reasoning_effort",
        "include_reasoning",
        "repetition_penalty",
        "length_penalty",
    }
)
"""The text chat request body's fields (as the SDK's TextChatParameters and chat payload have them)."""
ROLES = frozenset({"system", "user", "assistant", "tool", "control"})
MORE_INFO = "https://cloud.ibm.com/apidocs/watsonx-ai"


@dataclass
class Recorded:
    """One request the server received."""

    method: str
    path: str
    query: dict[str, list[str]]
    headers: dict[str, str]
    body: Any


class WatsonxError(Exception):
    """A request the service refuses: an HTTP status and watsonx's error code and message."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def make_tls(directory: Path, host: str = "127.0.0.1") -> tuple[Path, Path, Path]:
    """A CA and a server certificate for `host` signed by it, as PEM files: (ca, cert, key)."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import ec
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    now = dt.datetime.now(dt.UTC)
    ca_key, key = ec.generate_private_key(ec.SECP256R1()), ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "sregraph test CA")])
    ca = (
        x509.CertificateBuilder()
        .subject_name(ca_name)
        .issuer_name(ca_name)
        .public_key(ca_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                key_cert_sign=True,
                crl_sign=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(ca_key.public_key()), critical=False)
        .sign(ca_key, hashes.SHA256())
    )
    leaf = (
        x509.CertificateBuilder()
        .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, host)]))
        .issuer_name(ca_name)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - dt.timedelta(minutes=5))
        .not_valid_after(now + dt.timedelta(days=1))
        .add_extension(
            x509.SubjectAlternativeName([x509.IPAddress(ipaddress.ip_address(host))]), critical=False
        )
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), critical=False
        )
        .sign(ca_key, hashes.SHA256())
    )
    paths = directory / "ca.pem", directory / "server.pem", directory / "server.key"
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(leaf.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(
        key.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        )
    )
    return paths


class FakeWatsonxServer(LoopbackServer):
    """Serves IAM, the project, the model specs and chat of watsonx.ai on https://127.0.0.1 from a thread."""

    def __init__(
        self,
        directory: Path,
        api_key: str,
        script: list[dict[str, Any]] | None = None,
        backend: str | None = None,
        model_id: str = "ibm/granite-3-8b-instruct",
        project_id: str = "proj-1",
        token_lifetime_s: int = TOKEN_LIFETIME_S,
    ) -> None:
        if (script is None) == (backend is None):
            raise ValueError("give either a script or a backend")
        self.api_key, self.model_id, self.project_id = api_key, model_id, project_id
        self.script = list(script or [])
        self.backend = backend.rstrip("/") if backend else None
        self.token_lifetime_s = token_lifetime_s
        self.requests: list[Recorded] = []
        self.tokens: dict[str, float] = {}
        """Access tokens issued, with their expiry (epoch seconds)."""
        self.usage_total = 0
        """The `usage.total_tokens` of every chat answer, summed."""
        self._chats = 0
        self._secret = secrets.token_bytes(32)
        self._lock = threading.Lock()
        self.ca_file, cert, key = make_tls(directory)
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(cert, key)
        self._httpd = ThreadingHTTPServer(("127.0.0.1", 0), self._handler())
        self._httpd.daemon_threads = True
        self._httpd.socket = context.wrap_socket(self._httpd.socket, server_side=True)
        self._thread = threading.Thread(
            target=self._httpd.serve_forever, kwargs={"poll_interval": 0.05}, name="fake-watsonx", daemon=True
        )

    @property
    def url(self) -> str:
        """The base URL: the watsonx.ai `url`, the IAM host and the platform API all live here."""
        host, port = self._httpd.server_address[:2]
        return f"https://{host!s}:{port}"

    @property
    def iam_url(self) -> str:
        """The IAM token endpoint."""
        return f"{self.url}/identity/token"

    def chat_requests(self) -> list[Recorded]:
        """The chat requests received, in order."""
        return [r for r in self.requests if r.path == "/ml/v1/text/chat"]

    # ------------------------------------------------------------------ routes

    def handle(self, method: str, target: str, headers: dict[str, str], raw: bytes) -> tuple[int, Any]:
        """Answer one request: (status, JSON body)."""
        parts = urlsplit(target)
        path, query = parts.path.rstrip("/"), parse_qs(parts.query)
        body: Any = raw.decode("utf-8", "replace")
        if headers.get("content-type", "").startswith("application/json") and raw:
            try:
                body = json.loads(raw)
            except json.JSONDecodeError as exc:
                return _error(400, "json_validation_error", f"the request body is not JSON: {exc}")
        with self._lock:
            self.requests.append(Recorded(method, path, query, headers, body))
        try:
            if method == "POST" and path == "/identity/token":
                return 200, self._token(headers, raw)
            if method == "GET" and path.startswith("/v2/projects/"):
                self._authorize(headers)
                return 200, self._project(path.removeprefix("/v2/projects/"))
            if method == "GET" and path == "/ml/v1/foundation_model_specs":
                _require_version(query)
                return 200, self._specs()
            if method == "POST" and path == "/ml/v1/text/chat":
                self._authorize(headers)
                _require_version(query)
                return 200, self._chat(body)
        except WatsonxError as exc:
            if path == "/identity/token":
                return exc.status, {"errorCode": exc.code, "errorMessage": exc.message, "context": {}}
            return _error(exc.status, exc.code, exc.message)
        return _error(404, "not_found", f"{method} {path} is not served here")

    def _token(self, headers: dict[str, str], raw: bytes) -> dict[str, Any]:
        if headers.get("content-type", "").split(";")[0].strip() != "application/x-www-form-urlencoded":
            raise WatsonxError(400, "BXNIM0109E", "Property missing or empty: the body must be form-encoded.")
        form = parse_qs(raw.decode("ascii", "replace"))
        if form.get("grant_type") != [GRANT_TYPE]:
            raise WatsonxError(400, "BXNIM0109E", "Property missing or empty: grant_type is unsupported.")
        if form.get("apikey") != [self.api_key]:
            raise WatsonxError(400, "BXNIM0415E", "Provided API key could not be found.")
        now = int(time.time())
        expires = now + self.token_lifetime_s
        claims = {"iam_id": "IBMid-sregraph-test", "sub": "sregraph-test", "iat": now, "exp": expires}
        token = self._jwt(claims)
        with self._lock:
            self.tokens[token] = expires
        return {
            "access_token": token,
            "refresh_token": "not_supported",
            "token_type": "Bearer",
            "expires_in": self.token_lifetime_s,
            "expiration": expires,
            "scope": "ibm openid",
        }

    def _jwt(self, claims: dict[str, Any]) -> str:
        def part(data: bytes) -> str:
            return base64.urlsafe_b64encode(data).rstrip(b"=").decode()

        header = {"alg": "HS256", "typ": "JWT"}
        head = part(json.dumps(header).encode()) + "." + part(json.dumps(claims).encode())
        return head + "." + part(hmac.new(self._secret, head.encode(), hashlib.sha256).digest())

    def _authorize(self, headers: dict[str, str]) -> None:
        scheme, _, token = headers.get("authorization", "").partition(" ")
        if scheme.lower() != "bearer" or not token:
            raise WatsonxError(401, "authorization_rejected", "Failed to authenticate the request: no token")
        with self._lock:
            expires = self.tokens.get(token)
        if expires is None:
            raise WatsonxError(
                401,
                "authentication_token_not_valid",
                "Failed to authenticate the request: invalid token",
            )
        if expires <= time.time():
            raise WatsonxError(
                401,
                "authentication_token_expired",
                "Failed to authenticate the request: expired token",
            )

    def _project(self, project_id: str) -> dict[str, Any]:
        if project_id != self.project_id:
            raise WatsonxError(404, "does_not_exist", f"project {project_id} does not exist")
        return {
            "metadata": {
                "guid": project_id,
                "url": f"/v2/projects/{project_id}",
                "created_at": "2025-01-01T00:00:00Z",
            },
            "entity": {
                "name": "sregraph-test",
                "storage": {"type": "bmcos_object_storage", "guid": "storage-1"},
                "compute": [
                    {"type": "machine_learning", "guid": "wml-1", "name": "watsonx-ml", "crn": "crn:test"}
                ],
            },
        }

    def _specs(self) -> dict[str, Any]:
        spec = {
            "model_id": self.model_id,
            "label": self.model_id.rsplit("/", 1)[-1],
            "provider": "test",
            "functions": [{"id": "text_chat"}, {"id": "text_generation"}],
            "model_limits": {"max_sequence_length": 8192, "max_output_tokens": 4096},
            "lifecycle": [{"id": "available", "start_date": "2025-01-01"}],
        }
        first = {"href": f"{self.url}/ml/v1/foundation_model_specs"}
        return {"total_count": 1, "limit": 100, "first": first, "resources": [spec]}

    # ------------------------------------------------------------------ chat

    def _chat(self, body: Any) -> dict[str, Any]:
        validate_chat(body, self.model_id, self.project_id)
        with self._lock:
            self._chats += 1
            n = self._chats
        if self.backend is not None:
            return self._from_backend(body, n)
        if n > len(self.script):
            raise WatsonxError(
                400, "invalid_request_entity", f"script exhausted: chat request {n}, {len(self.script)} given"
            )
        step = self.script[n - 1]
        if step["status"] != 200:
            reason = step.get("content") or f"scripted HTTP {step['status']}"
            raise WatsonxError(step["status"], "scripted_failure", reason)
        calls = [
            {
                "id": f"chatcmpl-tool-{n}{i}",
                "type": "function",
                "function": {"name": name, "arguments": json.dumps(args)},
            }
            for i, (name, args) in enumerate(step["tool_calls"])
        ]
        message: dict[str, Any] = {"role": "assistant", "content": step["content"] or ""}
        if calls:
            message["tool_calls"] = calls
        prompt, completion = step["usage"]
        return self._answer(n, message, "tool_calls" if calls else "stop", prompt, completion)

    def _answer(
        self, n: int, message: dict[str, Any], finish: str, prompt: int, completion: int
    ) -> dict[str, Any]:
        now = dt.datetime.now(dt.UTC)
        with self._lock:
            self.usage_total += prompt + completion
        return {
            "id": f"chat-{n:08x}",
            "object": "chat.completion",
            "model_id": self.model_id,
            "model": self.model_id,
            "choices": [{"index": 0, "message": message, "finish_reason": finish}],
            "created": int(now.timestamp()),
            "model_version": "1.0.0",
            "created_at": now.isoformat(timespec="milliseconds").replace("+00:00", "Z"),
            "usage": {
                "completion_tokens": completion,
                "prompt_tokens": prompt,
                "total_tokens": prompt + completion,
            },
        }

    def _from_backend(self, body: dict[str, Any], n: int) -> dict[str, Any]:
        """The chat request as OpenAI's /chat/completions to `backend`, the answer back in watsonx's shape."""
        request = to_openai(body)
        data = json.dumps(request).encode()
        headers = {"Content-Type": "application/json"}
        call = urllib.request.Request(f"{self.backend}/chat/completions", data, headers)
        try:
            with urllib.request.urlopen(call, timeout=BACKEND_TIMEOUT_S) as answer:
                result = json.load(answer)
        except urllib.error.HTTPError as exc:
            detail = exc.read().decode("utf-8", "replace")[:500]
            status = exc.code if exc.code < 500 else 500
            raise WatsonxError(status, "model_error", f"the model server said: {detail}") from exc
        except OSError as exc:
            raise WatsonxError(503, "model_unavailable", f"the model server is unreachable: {exc}") from exc
        choice = result["choices"][0]
        source = choice["message"]
        message: dict[str, Any] = {"role": "assistant", "content": source.get("content") or ""}
        if source.get("tool_calls"):
            message["tool_calls"] = [
                {
                    "id": c.get("id") or f"chatcmpl-tool-{n}{i}",
                    "type": "function",
                    "function": {
                        "name": c["function"]["name"],
                        "arguments": c["function"].get("arguments") or "{}",
                    },
                }
                for i, c in enumerate(source["tool_calls"])
            ]
        usage = result.get("usage") or {}
        finish = "tool_calls" if message.get("tool_calls") else (choice.get("finish_reason") or "stop")
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        return self._answer(n, message, finish, prompt, completion)

    def _handler(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's naming)
                self._serve("GET")

            def do_POST(self) -> None:  # noqa: N802
                self._serve("POST")

            def _serve(self, method: str) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                raw = self.rfile.read(length) if length else b""
                headers = {k.lower(): v for k, v in self.headers.items()}
                status, payload = server.handle(method, self.path, headers, raw)
                answer_json(self, status, payload)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 (the base class's signature)
                pass

        return Handler


def _require_version(query: dict[str, list[str]]) -> None:
    version = (query.get("version") or [""])[0]
    if not version or not _is_date(version):
        raise WatsonxError(400, "invalid_parameter", "Missing or invalid query parameter: version (a date)")


def _is_date(text: str) -> bool:
    try:
        dt.date.fromisoformat(text)
    except ValueError:
        return False
    return True


def validate_chat(body: Any, model_id: str, project_id: str) -> None:
    """Refuse, as the service does, a chat request it would not take (400 with the reason)."""

    def bad(message: str) -> WatsonxError:
        return WatsonxError(400, "json_validation_error", message)

    if not isinstance(body, dict):
        raise bad("the request body must be a JSON object")
    unknown = sorted(set(body) - CHAT_FIELDS)
    if unknown:
        raise bad(f"Json document validation error: unknown field(s) {unknown}")
    if body.get("model_id") != model_id:
        raise WatsonxError(404, "model_not_supported", f"Model '{body.get('model_id')}' is not supported")
    if body.get("project_id") != project_id and not body.get("space_id"):
        raise bad("Either 'project_id' or 'space_id' must be specified, and the project must exist")
    messages = body.get("messages")
    if not isinstance(messages, list) or not messages:
        raise bad("'messages' must be a non-empty array")
    call_ids: set[str] = set()
    for i, m in enumerate(messages):
        if not isinstance(m, dict) or m.get("role") not in ROLES:
            raise bad(f"messages[{i}].role must be one of {sorted(ROLES)}")
        content = m.get("content")
        if m["role"] == "assistant":
            for call in m.get("tool_calls") or []:
                if not isinstance(call, dict) or call.get("type") != "function" or not call.get("id"):
                    raise bad(f"messages[{i}].tool_calls: each needs an id and type 'function'")
                arguments = call.get("function", {}).get("arguments")
                if not isinstance(arguments, str):
                    raise bad(f"messages[{i}].tool_calls[].function.arguments must be a JSON string")
                call_ids.add(call["id"])
            if content is None and not m.get("tool_calls"):
                raise bad(f"messages[{i}]: an assistant message needs content or tool_calls")
        elif m["role"] == "tool":
            if not isinstance(content, str) or m.get("tool_call_id") not in call_ids:
                raise bad(f"messages[{i}]: a tool message needs string content and a known tool_call_id")
        elif m["role"] == "user":
            if not (isinstance(content, str) or isinstance(content, list)) or not content:
                raise bad(f"messages[{i}].content must be a non-empty string or array of content parts")
        elif not isinstance(content, str):
            raise bad(f"messages[{i}].content must be a string")
    tools = body.get("tools") or []
    names = set()
    for tool in tools:
        function = tool.get("function") if isinstance(tool, dict) else None
        if not isinstance(function, dict) or tool.get("type") != "function" or not function.get("name"):
            raise bad("tools[]: each must be {type: function, function: {name, parameters}}")
        names.add(function["name"])
    if "tool_choice_option" in body and body["tool_choice_option"] not in ("none", "auto", "required"):
        raise bad("tool_choice_option must be one of none, auto, required")
    if "tool_choice" in body:
        if "tool_choice_option" in body:
            raise bad("tool_choice and tool_choice_option cannot both be given")
        choice = body["tool_choice"]
        name = choice.get("function", {}).get("name") if isinstance(choice, dict) else None
        if not isinstance(choice, dict) or choice.get("type") != "function" or name not in names:
            raise bad("tool_choice must be {type: function, function: {name}} naming one of the tools")
    if ("tool_choice" in body or "tool_choice_option" in body) and not tools:
        raise bad("tool_choice needs tools")
    fmt = body.get("response_format")
    if fmt is not None:
        kind = fmt.get("type") if isinstance(fmt, dict) else None
        if kind not in ("text", "json_object", "json_schema"):
            raise bad("response_format.type must be one of text, json_object, json_schema")
        if kind == "json_schema" and not isinstance(fmt.get("json_schema", {}).get("schema"), dict):
            raise bad("response_format.json_schema.schema is required for type json_schema")
    for field, low, high in (("temperature", 0, 2), ("top_p", 0, 1)):
        value = body.get(field)
        if value is not None and (not isinstance(value, (int, float)) or not low <= value <= high):
            raise bad(f"{field} must be a number in [{low}, {high}]")
    for field in ("max_tokens", "max_completion_tokens", "time_limit"):
        value = body.get(field)
        if value is not None and (not isinstance(value, int) or isinstance(value, bool) or value <= 0):
            raise bad(f"{field} must be a positive integer")


def to_openai(body: dict[str, Any]) -> dict[str, Any]:
    """A watsonx chat request as an OpenAI /chat/completions request to an OpenAI-compatible server."""
    # llama.cpp refuses `content: null` beside tool calls.
    messages = [{**m, "content": m.get("content") or ""} for m in body["messages"]]
    request: dict[str, Any] = {"model": body["model_id"], "messages": messages}
    for field in (
        "tools",
        "temperature",
        "max_tokens",
        "top_p",
        "seed",
        "stop",
        "frequency_penalty",
        "presence_penalty",
    ):
        if field in body:
            request[field] = body[field]
    if "max_completion_tokens" in body and "max_tokens" not in body:
        request["max_tokens"] = body["max_completion_tokens"]
    if "tool_choice_option" in body:
        request["tool_choice"] = body["tool_choice_option"]
    elif "tool_choice" in body:
        request["tool_choice"] = body["tool_choice"]
    fmt = body.get("response_format")
    if fmt and fmt.get("type") == "json_schema":
        # llama.cpp's server answers 500 to json_schema; json_object with the schema is its constrained form.
        request["response_format"] = {"type": "json_object", "schema": fmt["json_schema"]["schema"]}
    elif fmt:
        request["response_format"] = fmt
    return request


def _error(status: int, code: str, message: str) -> tuple[int, dict[str, Any]]:
    trace = secrets.token_hex(16)
    return status, {
        "errors": [{"code": code, "message": message, "more_info": MORE_INFO}],
        "trace": trace,
        "status_code": status,
    }
