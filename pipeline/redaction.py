"""Secrets never leave argen: every text that does (records, reports, logs, errors shown to the user) passes
through redact().

What is removed: a URL's user:password@, credentials in a URL's query string (presigned S3 signatures, tokens,
passwords), and the values of the process's secret environment variables (AWS_SECRET_ACCESS_KEY,
AWS_SESSION_TOKEN, *_PASSWORD, *_TOKEN ...) wherever they appear, plus any value registered with
add_secret() (the password of a configured endpoint_url, say).
"""
from __future__ import annotations

import logging
import os
import re
from urllib.parse import unquote, urlsplit, urlunsplit

MASK = "***"

# env names whose values are secrets; *_FILE / *_PATH / *_DIR name where a secret lives, not the secret
SECRET_ENV = re.compile(r"SECRET|PASSWORD|PASSWD|TOKEN|CREDENTIAL|ACCESS_KEY|API_KEY|PRIVATE_KEY|AUTH", re.I)
NOT_SECRET_ENV = re.compile(r"_(FILE|PATH|DIR|URL|ENDPOINT|MODE|TYPE)$", re.I)
MIN_SECRET_LENGTH = 6  # shorter values ("1", "true") are too common in text to be masked wherever they appear

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.\-]*://)(?P<userinfo>[^/\s@?#\"'<>]+)@")
_QUERY_SECRET = re.compile(
    r"(?P<name>[?&;](?:x-amz-(?:signature|credential|security-token)|awsaccesskeyid|signature|sig|"
    r"[a-z_\-]*(?:token|password|passwd|secret|api_?key|access_?key))=)[^&\s\"'#<>]*", re.I)

_registered: set[str] = set()


def add_secret(value: str | None) -> None:
    """Mask this value wherever it appears from now on (in this process)."""
    if value and len(value) >= MIN_SECRET_LENGTH:
        _registered.add(value)


def add_url_secrets(url: str | None) -> None:
    """Register the password (and user) of a URL, raw and percent-decoded: some libraries print the parts."""
    if not url or "@" not in url:
        return
    try:
        parts = urlsplit(url)
        user, password = parts.username, parts.password
    except ValueError:
        return
    for value in (password, user):
        if value:
            add_secret(value)
            add_secret(unquote(value))


def _secret_values() -> list[str]:
    values = set(_registered)
    for name, value in os.environ.items():
        if SECRET_ENV.search(name) and not NOT_SECRET_ENV.search(name) and len(value) >= MIN_SECRET_LENGTH:
            values.add(value)
    return sorted(values, key=len, reverse=True)  # longest first: a secret containing another is masked whole


def redact(text: str) -> str:
    """`text` without URL credentials, query-string secrets and known secret values."""
    if not text:
        return text
    text = _USERINFO.sub(lambda m: m.group("scheme"), text)
    text = _QUERY_SECRET.sub(lambda m: m.group("name") + MASK, text)
    for value in _secret_values():
        if value in text:
            text = text.replace(value, MASK)
    return text


def redact_url(url: str | None) -> str | None:
    """A URL without user:password@ (and without query-string credentials)."""
    if not url:
        return url
    try:
        parts = urlsplit(url)
        if parts.username or parts.password:
            host = parts.hostname or ""
            if parts.port:
                host = f"{host}:{parts.port}"
            url = urlunsplit((parts.scheme, host, parts.path, parts.query, parts.fragment))
    except ValueError:  # a malformed port, say: the pattern below still drops the userinfo
        pass
    return redact(url)


def describe_error(e: BaseException) -> str:
    """`Type: message` of an exception, redacted: how argen shows an error it did not make itself."""
    return redact(f"{type(e).__name__}: {e}")


class RedactingFilter(logging.Filter):
    """A handler filter that redacts each record's message and traceback before it is written."""

    def filter(self, record: logging.LogRecord) -> bool:
        try:
            message = record.getMessage()
        except Exception:
            return True
        record.msg, record.args = redact(message), None
        if record.exc_info and not record.exc_text:
            record.exc_text = redact(logging.Formatter().formatException(record.exc_info))
        elif record.exc_text:
            record.exc_text = redact(record.exc_text)
        if record.stack_info:
            record.stack_info = redact(record.stack_info)
        return True


def install_log_redaction(logger: logging.Logger | None = None) -> None:
    """Add RedactingFilter to the handlers of `logger` (the root logger by default) and to logging's last-resort
    handler, once each."""
    handlers = list((logger or logging.getLogger()).handlers)
    if logging.lastResort is not None:
        handlers.append(logging.lastResort)
    for handler in handlers:
        if not any(isinstance(f, RedactingFilter) for f in handler.filters):
            handler.addFilter(RedactingFilter())
