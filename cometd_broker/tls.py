"""TLS on the public port without a proxy in front: the server's SSLContext, built once at start.

Both HTTP paths and the websocket run on whatever transport the listening socket gives them, so TLS is
only the context passed to the site (serving.py): asyncio (or uvloop) decrypts, and the lean protocol,
aiohttp's and the websocket code see plain bytes. The cluster's private ports stay plain HTTP on the
address of `--forward-host`: they carry requests between processes, never a client's connection.

Errors are `TlsError` with one line naming the option and the file, so `serve` can print it and exit 2.
"""

from __future__ import annotations

import ssl


class TlsError(ValueError):
    """The certificate or key cannot be used; the message is one line for the operator."""


def server_context(cert: str, key: str) -> ssl.SSLContext:
    """A server context with the certificate chain `cert` and its private key `key` (PEM files),
    TLS 1.2 or later and the ssl module's default ciphers."""
    _check_pem("tls_cert", cert, _read(cert, "tls_cert"), b"-----BEGIN CERTIFICATE-----", "certificate")
    key_pem = _read(key, "tls_key")
    _check_pem("tls_key", key, key_pem, b"PRIVATE KEY-----", "private key")
    if b"ENCRYPTED" in key_pem:
        raise TlsError(f"tls_key {key}: the private key is encrypted; give an unencrypted key "
                       "(readable by the broker's user only)")
    context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    context.minimum_version = ssl.TLSVersion.TLSv1_2
    try:
        context.load_cert_chain(cert, key, password=_no_password)
    except ssl.SSLError as exc:
        raise TlsError(_describe(exc, cert, key)) from None
    except OSError as exc:  # the file went away or became unreadable since the check
        raise TlsError(f"tls: cannot read {exc.filename or cert}: {exc.strerror or exc}") from None
    # HTTP/1.1 only: neither path speaks HTTP/2, and a client that offers ALPN should know it.
    context.set_alpn_protocols(["http/1.1"])
    return context


def _read(path: str, option: str) -> bytes:
    try:
        with open(path, "rb") as handle:
            return handle.read()
    except OSError as exc:
        raise TlsError(f"{option} {path}: cannot read it: {exc.strerror or exc}") from None


def _check_pem(option: str, path: str, content: bytes, marker: bytes, what: str) -> None:
    if marker not in content:
        raise TlsError(f"{option} {path}: no PEM {what} in it")


def _no_password() -> bytes:
    """Never prompt on a terminal for a passphrase (OpenSSL's default): an encrypted key is an error."""
    return b""


def _describe(exc: ssl.SSLError, cert: str, key: str) -> str:
    if "KEY_VALUES_MISMATCH" in (exc.reason or "") or "key values mismatch" in str(exc):
        return f"tls_key {key} is not the private key of the certificate in tls_cert {cert}"
    return f"tls_cert {cert} / tls_key {key}: cannot be used: {exc.reason or exc.strerror or exc}"
