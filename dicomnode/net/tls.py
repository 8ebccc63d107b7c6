"""DICOM over TLS (PS3.15 Annex B): the contexts of both sides, and handshake failures in plain words.

The profile is BCP 195 (RFC 9325), DCMTK's default: TLS 1.2 or 1.3 only, forward-secret AEAD
cipher suites, certificates checked against ``[dicom.tls] trusted_certificates`` both ways; as a
client Dolmen presents its own certificate and checks the server's host name.
"""
from __future__ import annotations

import logging
import os
import ssl
from typing import Any

from dicomnode.errors import DolmenError

LOGGER = logging.getLogger(__name__)

#: BCP 195 (RFC 9325 4.2) TLS 1.2 cipher suites; TLS 1.3 suites are all acceptable.
BCP195_CIPHERS = ":".join((
    "ECDHE-ECDSA-AES128-GCM-SHA256", "ECDHE-RSA-AES128-GCM-SHA256",
    "ECDHE-ECDSA-AES256-GCM-SHA384", "ECDHE-RSA-AES256-GCM-SHA384",
    "DHE-RSA-AES128-GCM-SHA256", "DHE-RSA-AES256-GCM-SHA384",
    "ECDHE-ECDSA-CHACHA20-POLY1305", "ECDHE-RSA-CHACHA20-POLY1305",
))


def enabled(settings: Any) -> bool:
    """Whether ``[dicom.tls]`` names a certificate (the TLS listener runs, TLS modalities work)."""
    return bool(settings["dicom.tls.certificate"])


def _context(settings: Any, purpose: ssl.Purpose) -> ssl.SSLContext:
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER if purpose is ssl.Purpose.CLIENT_AUTH
                             else ssl.PROTOCOL_TLS_CLIENT)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    context.set_ciphers(BCP195_CIPHERS)
    try:
        context.load_cert_chain(os.path.expanduser(settings["dicom.tls.certificate"]),
                                os.path.expanduser(settings["dicom.tls.private_key"]))
    except (ssl.SSLError, OSError) as exc:
        raise DolmenError(f"[dicom.tls] certificate/private_key cannot be used: {describe(exc)}",
                          code="tls_config") from None
    try:
        context.load_verify_locations(os.path.expanduser(settings["dicom.tls.trusted_certificates"]))
    except (ssl.SSLError, OSError) as exc:
        raise DolmenError(f"[dicom.tls] trusted_certificates cannot be used: {describe(exc)}",
                          code="tls_config") from None
    return context


def server_context(settings: Any) -> ssl.SSLContext:
    """The TLS listener's context: Dolmen's certificate; clients' checked against the trusted CAs."""
    context = _context(settings, ssl.Purpose.CLIENT_AUTH)
    context.verify_mode = ssl.CERT_REQUIRED if settings["dicom.tls.require_client_certificate"] else ssl.CERT_OPTIONAL
    return context


def client_context(settings: Any) -> ssl.SSLContext:
    """For associations Dolmen opens over TLS: its certificate as the client's, the server's
    checked against the trusted CAs and its host name."""
    context = _context(settings, ssl.Purpose.SERVER_AUTH)
    context.check_hostname = True
    context.verify_mode = ssl.CERT_REQUIRED
    return context


def describe(exc: BaseException) -> str:
    """Why a TLS handshake (or loading a certificate) failed, for a user."""
    if isinstance(exc, ssl.SSLCertVerificationError):
        message = str(getattr(exc, "verify_message", "") or exc)
        lower = message.lower()
        if "expired" in lower:
            return "the certificate has expired"
        if "not yet valid" in lower:
            return "the certificate is not valid yet"
        if "hostname mismatch" in lower or "ip address mismatch" in lower:
            return f"the certificate does not name this host ({message})"
        if "self-signed" in lower or "self signed" in lower or "unable to get local issuer" in lower \
                or "unable to get issuer" in lower:
            return ("the certificate is signed by an unknown CA (not in [dicom.tls] trusted_certificates)"
                    f" ({message})")
        return f"the certificate was refused ({message})"
    if isinstance(exc, ssl.SSLError):
        reason = str(getattr(exc, "reason", "") or "")
        text = f"{reason} {exc}".lower()
        if "peer did not return a certificate" in text or "certificate required" in text:
            return "no client certificate was presented (Dolmen requires one)"
        if "unknown ca" in text:
            return "the other side does not trust our certificate's CA"
        if "certificate expired" in text:
            return "the other side found our certificate expired"
        if "bad certificate" in text or "certificate unknown" in text:
            return "the other side refused our certificate"
        if "wrong version number" in text or "http request" in text or "unexpected eof" in text \
                or "packet length too long" in text or "record layer failure" in text:
            return "the other side does not speak TLS on this port (plain DICOM, or something else)"
        if "no shared cipher" in text or "handshake failure" in text or "unsupported protocol" in text:
            return "no TLS version or cipher suite in common (Dolmen requires TLS 1.2+ with BCP 195 suites)"
        if "key values mismatch" in text:
            return "the private key does not belong to the certificate"
        return reason.replace("_", " ").lower() or str(exc)
    if isinstance(exc, TimeoutError):
        return "the TLS handshake did not finish in time"
    if isinstance(exc, ConnectionResetError):
        return "the other side closed the connection during the TLS handshake (it may not trust our certificate)"
    if isinstance(exc, OSError):
        return exc.strerror or str(exc) or type(exc).__name__
    return str(exc)
