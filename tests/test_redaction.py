"""pipeline.redaction: what is masked in any text argen lets out, and what is left alone."""
from __future__ import annotations

import logging

from pipeline import redaction
from pipeline.redaction import MASK, RedactingFilter, add_url_secrets, describe_error, redact, redact_url


def test_urls_lose_their_credentials_and_the_rest_stays():
    text = ('Could not connect to the endpoint URL: "http://alice:s3cr%40t@10.0.0.1:9000/b/k" and '
            "https://minio.local/b/k?X-Amz-Credential=AKIA%2F1&X-Amz-Signature=abcdef&partNumber=2 "
            "and ray://user:pw@head:10001, s3://bucket/prefix, user@example.com")
    out = redact(text)
    assert "alice" not in out and "s3cr" not in out and "abcdef" not in out and "AKIA" not in out
    assert "http://10.0.0.1:9000/b/k" in out and "ray://head:10001" in out
    assert f"X-Amz-Signature={MASK}" in out and "partNumber=2" in out
    assert "s3://bucket/prefix" in out and "user@example.com" in out
    assert redact_url("http://u:p@h:1/x?token=abc") == f"http://h:1/x?token={MASK}"
    assert redact_url(None) is None and redact("") == ""


def test_secret_environment_values_and_registered_ones_are_masked(monkeypatch):
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "wJalrXUtnFEMI-planted")
    monkeypatch.setenv("MY_SERVICE_TOKEN", "tok-123456789")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/home/me/.aws/credentials")  # where, not what
    monkeypatch.setenv("ARGEN_FLAG", "1")
    monkeypatch.setattr(redaction, "_registered", set())
    add_url_secrets("http://bob:pa%2Fss-word@host:9000")
    text = "key wJalrXUtnFEMI-planted tok-123456789 pa/ss-word pa%2Fss-word /home/me/.aws/credentials 1"
    out = redact(text)
    assert out == f"key {MASK} {MASK} {MASK} {MASK} /home/me/.aws/credentials 1"
    assert describe_error(ValueError("bad tok-123456789")) == f"ValueError: bad {MASK}"


def test_log_records_are_redacted_with_their_tracebacks(monkeypatch, caplog):
    monkeypatch.setenv("SOME_PASSWORD", "hunter2-hunter2")
    logger = logging.getLogger("argen.test.redaction")
    caplog.handler.addFilter(RedactingFilter())
    try:
        raise RuntimeError("failed at http://u:hunter2-hunter2@h/x")
    except RuntimeError:
        logger.exception("write to %s failed", "http://u:hunter2-hunter2@h/x")
    assert "hunter2" not in caplog.text and "http://h/x" in caplog.text and "RuntimeError" in caplog.text
