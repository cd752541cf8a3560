"""Credentials embedded in URLs (``https://user:secret@host/v1``), hidden before a URL reaches a manifest, a
log or the screen.

Imports nothing from lmforge, so any module can use it.
"""

from __future__ import annotations

import re

# scheme://netloc; netloc ends at the first "/", "?", "#" or whitespace. The user-info is everything
# before its last "@", as urllib and httpx read it (a password with a raw "@" still counts as one).
_URL = re.compile(r"(?P<scheme>\b[A-Za-z][A-Za-z0-9+.-]*://)(?P<netloc>[^\s/?#]*)")


def redact_url(url: str) -> str:
    """``url`` with the credentials in its user-info hidden.

    ``https://user:secret@host/v1`` becomes ``https://user:***@host/v1``; a lone user-info (often a
    token: ``https://token@host``) becomes ``https://***@host``. A URL without user-info comes back
    unchanged, and redacting twice changes nothing more.
    """
    match = _URL.match(url)
    if match is None:
        return url
    return match["scheme"] + _redact_netloc(match["netloc"]) + url[match.end() :]


def redact_urls(text: str) -> str:
    """``text`` (an error message, a log line) with every URL in it redacted as :func:`redact_url` does."""
    return _URL.sub(lambda match: match["scheme"] + _redact_netloc(match["netloc"]), text)


def _redact_netloc(netloc: str) -> str:
    userinfo, at, host = netloc.rpartition("@")
    if not at:
        return netloc
    user, colon, _ = userinfo.partition(":")
    return f"{user}:***@{host}" if colon else f"***@{host}"


def redact_values(value: object) -> object:
    """A copy of ``value`` (nested dicts and lists, as a manifest holds) with every URL in its strings redacted."""
    if isinstance(value, str):
        return redact_urls(value) if "://" in value else value
    if isinstance(value, dict):
        return {key: redact_values(item) for key, item in value.items()}
    if isinstance(value, list):
        return [redact_values(item) for item in value]
    return value
