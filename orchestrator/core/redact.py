"""Secrets out of everything shown or written: secure ARM parameter values, credentials in
URLs and signed query strings (SAS tokens, pre-signed URLs).

Two layers. `Redactor(secrets)` replaces known secret values (found in the template and its
parameters) wherever they occur, whatever a customizer did to print them. `scrub` catches
the shapes of secrets in text nobody told us about: `scheme://user:password@` and the values
of signature-like query parameters. Pure: no I/O.
"""
from __future__ import annotations

import json
import re
import urllib.parse
from dataclasses import dataclass
from typing import Any, Iterable

MASK = "***"
MIN_SECRET_LENGTH = 4  # shorter values (a "1", "true") would blank out half a log; no real secret is this short
_URL = re.compile(r"\b[a-z][a-z0-9+.-]*://[^\s\"'<>]+", re.IGNORECASE)
_USERINFO = re.compile(r"(\b[a-z][a-z0-9+.-]*://[^/\s:@\"']*:)[^@/\s\"']*(@)", re.IGNORECASE)
# query parameters whose value is a credential: Azure SAS (sig), AWS/GCS pre-signed URLs,
# OAuth tokens, API keys
_SIGNED = re.compile(r"([?&](?:sig|signature|x-amz-signature|x-amz-security-token|x-amz-credential|"
                     r"x-goog-signature|x-goog-credential|token|access_token|api[-_]?key|key|code|"
                     r"password|secret)=)[^&#\s\"']+", re.IGNORECASE)


def scrub(text: str) -> str:
    """Credentials and signatures by their shape."""
    return _SIGNED.sub(lambda m: m.group(1) + MASK, _USERINFO.sub(lambda m: m.group(1) + MASK + m.group(2), text))


@dataclass(frozen=True)
class Redactor:
    secrets: tuple[str, ...] = ()  # longest first, so that a secret holding another goes whole

    @classmethod
    def of(cls, values: Iterable[str]) -> "Redactor":
        found = {v for v in values if isinstance(v, str) and len(v) >= MIN_SECRET_LENGTH}
        # a value also appears %-encoded in URLs and JSON-escaped in files (template.json)
        found |= {urllib.parse.quote(v, safe="") for v in list(found)}
        found |= {json.dumps(v)[1:-1] for v in list(found)}
        return cls(tuple(sorted(found, key=len, reverse=True)))

    def __call__(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return scrub(text)

    def data(self, value: Any) -> Any:
        """A JSON-like value with every string redacted (keys too)."""
        if isinstance(value, str):
            return self(value)
        if isinstance(value, dict):
            return {self(str(k)): self.data(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [self.data(v) for v in value]
        return value


def url_secrets(value: Any) -> list[str]:
    """Every credential and query string of the URLs in a JSON-like value: the template's own
    download URLs carry their SAS tokens in the query, whatever the parameter is called."""
    found: list[str] = []
    for text in _strings(value):
        for match in _URL.finditer(text):
            try:
                parts = urllib.parse.urlsplit(match.group())
            except ValueError:
                continue
            if parts.password:
                found.append(parts.password)
            if parts.query:
                found.append(parts.query)
                found.extend(v for _, v in urllib.parse.parse_qsl(parts.query) if len(v) >= 16)
    return found


def secure_parameter_values(document: Any, given: dict[str, Any]) -> list[str]:
    """The values of an ARM deployment's securestring/secureobject parameters: given, or their
    literal defaultValue; a secureobject's every string."""
    declared = document.get("parameters") if isinstance(document, dict) else None
    if not isinstance(declared, dict):
        return []
    lowered = {str(k).lower(): v for k, v in given.items()}
    values: list[str] = []
    for name, declaration in declared.items():
        if not isinstance(declaration, dict):
            continue
        kind = next((v for k, v in declaration.items() if k.lower() == "type"), None)
        if not (isinstance(kind, str) and kind.lower().startswith("secure")):
            continue
        value = lowered.get(str(name).lower(), next((v for k, v in declaration.items()
                                                      if k.lower() == "defaultvalue"), None))
        values.extend(_strings(value))
    return values


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in (*_strings(k), *_strings(v))]
    if isinstance(value, (list, tuple)):
        return [s for v in value for s in _strings(v)]
    return []


def display_url(url: str) -> str:
    """The URL as logs and errors may show it: no credentials, no query (signed URLs carry
    their secret there)."""
    try:
        parts = urllib.parse.urlsplit(url)
    except ValueError:
        return "<unparsable URL>"
    host = parts.hostname or ""
    if parts.port:
        host += f":{parts.port}"
    query = "?<query hidden>" if parts.query else ""
    return urllib.parse.urlunsplit((parts.scheme, host, parts.path, "", "")) + query
