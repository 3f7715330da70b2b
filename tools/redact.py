"""Secret redaction for every text sregraph posts where humans (or the internet) can read it.

Issue bodies, comments, pull-request bodies and commit messages quote logs, configs and error messages, and
those carry secrets more often than anyone likes. `redact` replaces what looks like a credential with
`[REDACTED]` (or `[REDACTED:<kind>]` for whole tokens, so a reader still knows what was there), keeping the
surrounding text readable: `postgres://app:[REDACTED]@db:5432/orders`, `password=[REDACTED]`.

Patterns are deliberately biased towards false positives: a redacted harmless value costs a moment of
reading; a leaked token costs a rotation and an incident of its own.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from typing import Any, TypeVar, overload

MASK = "[REDACTED]"

SECRET_ENV_NAMES: tuple[str, ...] = (
    "GITHUB_TOKEN",
    "OPENAI_API_KEY",
    "WATSONX_APIKEY",
    "SREGRAPH_ALERTS_TOKEN",
    "SREGRAPH_SIGNING_KEY",
    "SREGRAPH_GITHUB_WEBHOOK_SECRET",
)
"""Environment variables that hold sregraph's own secrets: never handed to a managed service, and their values
are removed from everything `redact_out` lets out."""

# Whole-token patterns: the match is replaced by a labelled mask.
_TOKENS: list[tuple[str, re.Pattern[str]]] = [
    # PEM private keys, including an unterminated block at the end of the text (a truncated log line).
    (
        "private-key",
        re.compile(
            r"-----BEGIN[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----.*?(?:-----END[A-Z0-9 ]*PRIVATE KEY(?: BLOCK)?-----|\Z)",
            re.DOTALL,
        ),
    ),
    # GitHub: classic (ghp_), OAuth (gho_), user-to-server (ghu_), server-to-server (ghs_), refresh (ghr_),
    # and fine-grained personal access tokens (github_pat_).
    ("github-token", re.compile(r"\b(?:gh[pousr]_[A-Za-z0-9]{20,255}|github_pat_[A-Za-z0-9_]{20,255})\b")),
    # AWS access key ids (long-term AKIA, temporary ASIA and friends).
    (
        "aws-access-key-id",
        re.compile(r"\b(?:AKIA|ASIA|ABIA|ACCA|AGPA|AIDA|AROA|ANPA|ANVA|AIPA)[A-Z0-9]{16}\b"),
    ),
    # sregraph's own API tokens (sregraph/api_auth.py).
    ("sregraph-token", re.compile(r"\bsrg_[A-Za-z0-9_-]{20,}")),
    ("slack-token", re.compile(r"\bxox[abposr]-[A-Za-z0-9-]{10,}\b")),
    ("google-api-key", re.compile(r"\bAIza[0-9A-Za-z_\-]{35}\b")),
    ("stripe-key", re.compile(r"\b[rs]k_(?:live|test)_[A-Za-z0-9]{16,}\b")),
    # JSON Web Tokens: three base64url parts, the first two starting with '{"' encoded.
    ("jwt", re.compile(r"\beyJ[A-Za-z0-9_-]{8,}\.eyJ[A-Za-z0-9_-]{8,}\.[A-Za-z0-9_-]{8,}")),
]

# Credentials inside URLs and connection strings: scheme://user:password@host keeps the user and host.
# The password may itself contain '@': the greedy match runs to the last '@' before the path.
_URL_PASSWORD = re.compile(r"(?P<head>\b[A-Za-z][A-Za-z0-9+.\-]*://[^\s:/@]*:)(?P<secret>[^\s/]+)(?P<tail>@)")
# `Authorization: Bearer ...`, `Authorization: token ...`, `Basic ...`: the scheme stays, the credential goes.
_AUTH_HEADER = re.compile(r"(?i)(?P<head>\b(?:bearer|token|basic)\s+)(?P<secret>[A-Za-z0-9\-._~+/]{12,}=*)")
# key=value / key: value / "key": "value" for keys that name a secret. Values may be quoted.
_SECRET_KEYS = (
    r"password|passwd|pwd|secret|client[_-]?secret|api[_-]?key|apikey|access[_-]?key|"
    r"secret[_-]?access[_-]?key|aws[_-]?secret[_-]?access[_-]?key|private[_-]?key|auth[_-]?token|"
    r"access[_-]?token|refresh[_-]?token|token|session[_-]?token|credentials?"
)
_KEY_VALUE = re.compile(
    r"""(?ix)
    (?P<head>
        ["']?\b(?:[A-Za-z0-9_.-]*[_.-])?(?:"""
    + _SECRET_KEYS
    + r""")\b["']?   # the key, maybe prefixed (DB_PASSWORD)
        \s*(?:=|:)\s*                                                     # = or :
    )
    (?P<secret>"[^"\n]*"|'[^'\n]*'|[^\s"',;&)}\]]+)                       # quoted or bare value
    """
)
# Connection strings in the ADO / ODBC style: Password=...; Pwd=...; (also covered by _KEY_VALUE, kept
# separate because values there may contain spaces up to the semicolon).
_ADO_PASSWORD = re.compile(r"(?i)(?P<head>\b(?:password|pwd)\s*=\s*)(?P<secret>[^;\n]+)(?=;)")


def redact(text: str, secrets: Iterable[str] = ()) -> str:
    """`text` with credentials replaced by `[REDACTED]`; `secrets` are literal values to remove as well."""
    if not text:
        return text
    # Literal secrets first (the token sregraph itself holds, for instance), longest first so a secret that
    # contains another is removed whole.
    for secret in sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True):
        text = text.replace(secret, MASK)
    for kind, pattern in _TOKENS:
        text = pattern.sub(f"[REDACTED:{kind}]", text)
    text = _URL_PASSWORD.sub(lambda m: m["head"] + MASK + m["tail"], text)
    text = _ADO_PASSWORD.sub(lambda m: m["head"] + MASK, text)
    text = _KEY_VALUE.sub(_mask_value, text)
    text = _AUTH_HEADER.sub(lambda m: m["head"] + MASK, text)
    return text


def _mask_value(match: re.Match[str]) -> str:
    secret = match["secret"]
    if secret.startswith(("[REDACTED", "'[REDACTED", '"[REDACTED')):
        return match[0]
    if len(secret) >= 2 and secret[0] == secret[-1] and secret[0] in "\"'":
        return f"{match['head']}{secret[0]}{MASK}{secret[0]}"
    return match["head"] + MASK


def known_secrets(environ: Mapping[str, str] | None = None) -> list[str]:
    """The values of sregraph's own secrets in the environment (see SECRET_ENV_NAMES)."""
    environ = os.environ if environ is None else environ
    return [value for name in SECRET_ENV_NAMES if (value := environ.get(name, "")) and len(value) >= 4]


def redact_out(text: str, secrets: Iterable[str] = ()) -> str:
    """The one redactor for every outward path: `redact` plus the values of sregraph's own secrets."""
    return redact(text, [*known_secrets(), *secrets])


_K = TypeVar("_K")


@overload
def redact_data(value: str) -> str: ...
@overload
def redact_data(value: dict[_K, Any]) -> dict[_K, Any]: ...
@overload
def redact_data(value: list[Any] | tuple[Any, ...]) -> list[Any]: ...
def redact_data(value: Any) -> Any:
    """`value` (JSON-like: dicts, lists, strings) with every string passed through `redact_out`."""
    return _redact_data(value, known_secrets())


def _redact_data(value: Any, secrets: list[str]) -> Any:
    # The environment's secrets are read once for the whole value, not once per string.
    if isinstance(value, str):
        return redact(value, secrets)
    if isinstance(value, dict):
        return {key: _redact_data(item, secrets) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [_redact_data(item, secrets) for item in value]
    return value
