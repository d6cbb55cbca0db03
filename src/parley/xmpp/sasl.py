"""Server side of the SASL mechanisms Parley offers, without any I/O.

SCRAM-SHA-1 and SCRAM-SHA-256 (RFC 5802, RFC 7677), their -PLUS variants with
``tls-server-end-point`` channel binding (RFC 5929), and PLAIN (RFC 4616).
The caller owns the stream: it base64-decodes what the client sent, feeds the
bytes in, and maps :class:`SASLFailure` to the RFC 6120 ``<failure/>``.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass

import precis_i18n
from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes

__all__ = [
    "HASHES",
    "PlainServer",
    "SASLFailure",
    "ScramCredentials",
    "ScramServer",
    "derive_scram_credentials",
    "tls_server_end_point",
    "verify_plain",
]

HASHES = {"SHA-1": "sha1", "SHA-256": "sha256"}

# RFC 6120 section 6.5.
CONDITIONS = frozenset(
    {
        "aborted",
        "account-disabled",
        "credentials-expired",
        "encryption-required",
        "incorrect-encoding",
        "invalid-authzid",
        "invalid-mechanism",
        "malformed-request",
        "mechanism-too-weak",
        "not-authorized",
        "temporary-auth-failure",
    }
)

CB_TYPE = "tls-server-end-point"
SALT_BYTES = 16
DEFAULT_ITERATIONS = 4096

_USERNAME = precis_i18n.get_profile("UsernameCaseMapped")
_OPAQUE = precis_i18n.get_profile("OpaqueString")

# RFC 5802 section 7 grammar pieces.
_SASLNAME = re.compile(r"(?:[^\x00,=]|=2C|=3D)+")
_PRINTABLE = re.compile(r"[\x21-\x2b\x2d-\x7e]+")
_CB_NAME = re.compile(r"[A-Za-z0-9.-]+")
_ATTR = re.compile(r"[A-Za-z]=")

# Fake salts for unknown users must stay the same across attempts, or an
# attacker could tell real accounts apart by asking twice.  A per-process
# secret achieves that until restart; deployments should pass a persistent one.
_PROCESS_SECRET = secrets.token_bytes(32)


class SASLFailure(Exception):
    """Authentication failed; ``condition`` is the RFC 6120 failure element."""

    def __init__(self, condition: str, text: str | None = None) -> None:
        if condition not in CONDITIONS:
            raise ValueError(f"unknown SASL failure condition {condition!r}")
        super().__init__(condition if text is None else f"{condition}: {text}")
        self.condition = condition
        self.text = text


@dataclass(frozen=True)
class ScramCredentials:
    """What the server stores for one user and one hash; never the password."""

    salt: bytes
    iterations: int
    stored_key: bytes
    server_key: bytes


def _hashlib_name(hash_name: str) -> str:
    try:
        return HASHES[hash_name]
    except KeyError:
        raise ValueError(f"unsupported SCRAM hash {hash_name!r}") from None


def _hmac(key: bytes, msg: bytes, algorithm: str) -> bytes:
    return hmac.new(key, msg, algorithm).digest()


def _prepare_password(password: str) -> bytes:
    try:
        return _OPAQUE.enforce(password).encode("utf-8")
    except UnicodeError as exc:
        raise ValueError(f"password is not a valid OpaqueString: {exc}") from None


def _derive(prepared: bytes, algorithm: str, salt: bytes, iterations: int) -> ScramCredentials:
    salted = hashlib.pbkdf2_hmac(algorithm, prepared, salt, iterations)
    client_key = _hmac(salted, b"Client Key", algorithm)
    return ScramCredentials(
        salt=salt,
        iterations=iterations,
        stored_key=hashlib.new(algorithm, client_key).digest(),
        server_key=_hmac(salted, b"Server Key", algorithm),
    )


def derive_scram_credentials(
    password: str,
    hash_name: str,
    *,
    salt: bytes | None = None,
    iterations: int = DEFAULT_ITERATIONS,
) -> ScramCredentials:
    """Compute the stored SCRAM keys for ``password``.

    Raises ValueError for an unknown hash, a bad iteration count, or a
    password that the OpaqueString profile rejects.
    """
    algorithm = _hashlib_name(hash_name)
    if iterations < 1:
        raise ValueError("iterations must be positive")
    if salt is None:
        salt = secrets.token_bytes(SALT_BYTES)
    elif not salt:
        raise ValueError("salt must not be empty")
    return _derive(_prepare_password(password), algorithm, salt, iterations)


def verify_plain(password: str, creds: ScramCredentials, hash_name: str) -> bool:
    """Check a PLAIN password against stored SCRAM credentials."""
    algorithm = _hashlib_name(hash_name)
    try:
        prepared = _prepare_password(password)
    except ValueError:
        return False
    candidate = _derive(prepared, algorithm, creds.salt, creds.iterations)
    return hmac.compare_digest(candidate.stored_key, creds.stored_key)


def tls_server_end_point(cert_der: bytes) -> bytes:
    """Channel binding data for ``tls-server-end-point`` (RFC 5929 section 4.1).

    Raises ValueError if the certificate cannot be parsed or its signature
    algorithm does not name exactly one hash (e.g. Ed25519), for which RFC 5929
    leaves the binding undefined; the caller should then not offer -PLUS.
    """
    cert = x509.load_der_x509_certificate(cert_der)
    try:
        algorithm = cert.signature_hash_algorithm
    except UnsupportedAlgorithm as exc:
        raise ValueError(f"unsupported certificate signature algorithm: {exc}") from None
    if algorithm is None:
        raise ValueError("certificate signature uses no single hash; binding undefined")
    if isinstance(algorithm, hashes.MD5 | hashes.SHA1):
        algorithm = hashes.SHA256()
    digest = hashes.Hash(algorithm)
    digest.update(cert_der)
    return digest.finalize()


def _b64decode(value: str, what: str) -> bytes:
    try:
        return base64.b64decode(value.encode("ascii"), validate=True)
    except (binascii.Error, UnicodeEncodeError):
        raise SASLFailure("malformed-request", f"{what} is not valid base64") from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _decode_utf8(data: bytes) -> str:
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise SASLFailure("malformed-request", "message is not valid UTF-8") from None


def _decode_saslname(value: str, what: str) -> str:
    if not _SASLNAME.fullmatch(value):
        raise SASLFailure("malformed-request", f"{what} is not a valid saslname")
    # "=3D" last, so that "=3D2C" correctly becomes "=2C" and not ",".
    return value.replace("=2C", ",").replace("=3D", "=")


def _prepare_username(value: str) -> str:
    try:
        return _USERNAME.enforce(value)
    except UnicodeError:
        raise SASLFailure("malformed-request", "username is not valid") from None


class ScramServer:
    """One SCRAM exchange: ``client_first`` → ``server_first`` → ``client_final``.

    ``nonce`` fixes the server's part of the nonce (for test vectors only).
    ``secret`` keys the fake salts of unknown users and ``fake_iterations`` is
    the iteration count shown for them; both should match the deployment so
    that unknown accounts look like real ones.
    """

    authzid: str | None
    username: str | None

    def __init__(
        self,
        hash_name: str,
        *,
        plus: bool,
        cb_data: bytes | None,
        cb_available: bool,
        nonce: str | None = None,
        secret: bytes | None = None,
        fake_iterations: int = DEFAULT_ITERATIONS,
    ) -> None:
        self._algorithm = _hashlib_name(hash_name)
        if plus and not cb_data:
            # The client picked -PLUS on a connection we cannot bind to (for
            # instance a certificate whose binding is undefined): refuse the
            # mechanism rather than crash the stream.
            raise SASLFailure("invalid-mechanism", "channel binding is not available")
        if nonce is not None and not _PRINTABLE.fullmatch(nonce):
            raise ValueError("nonce must be printable ASCII without commas")
        if fake_iterations < 1:
            raise ValueError("fake_iterations must be positive")
        self.hash_name = hash_name
        self.plus = plus
        self._cb_data = cb_data
        self._cb_available = cb_available
        self._server_nonce = nonce
        self._secret = _PROCESS_SECRET if secret is None else secret
        self._fake_iterations = fake_iterations
        self.authzid = None
        self.username = None
        self._state = "client-first"
        self._gs2_header = b""
        self._uses_cb = False
        self._client_first_bare = ""
        self._server_first = ""
        self._nonce = ""
        self._creds: ScramCredentials | None = None
        self._known_user = False

    @property
    def mechanism(self) -> str:
        return f"SCRAM-{self.hash_name}{'-PLUS' if self.plus else ''}"

    def _expect(self, state: str) -> None:
        if self._state != state:
            raise RuntimeError(f"SCRAM step called out of order (expected {self._state})")

    def client_first(self, data: bytes) -> str:
        """Parse the client-first-message and return the prepared username."""
        self._expect("client-first")
        try:
            return self._client_first(data)
        except SASLFailure:
            # Any failure ends the exchange; a retry needs a new object.
            self._state = "failed"
            raise

    def _client_first(self, data: bytes) -> str:
        text = _decode_utf8(data)
        fields = text.split(",", 2)
        if len(fields) != 3:
            raise SASLFailure("malformed-request", "missing GS2 header")
        flag, authz, bare = fields
        self._check_cb_flag(flag)
        if authz:
            if not authz.startswith("a="):
                raise SASLFailure("malformed-request", "bad authzid in GS2 header")
            self.authzid = _decode_saslname(authz[2:], "authzid")
        self._gs2_header = f"{flag},{authz},".encode()

        attrs = bare.split(",")
        if attrs[0].startswith("m="):
            raise SASLFailure("malformed-request", "mandatory extensions are not supported")
        if len(attrs) < 2 or not attrs[0].startswith("n=") or not attrs[1].startswith("r="):
            raise SASLFailure("malformed-request", "expected n= and r= attributes")
        for extension in attrs[2:]:
            if not _ATTR.match(extension):
                raise SASLFailure("malformed-request", "bad attribute in client-first-message")
        client_nonce = attrs[1][2:]
        if not _PRINTABLE.fullmatch(client_nonce):
            raise SASLFailure("malformed-request", "bad client nonce")
        username = _prepare_username(_decode_saslname(attrs[0][2:], "username"))

        self.username = username
        self._client_first_bare = bare
        self._nonce = client_nonce + (self._server_nonce or secrets.token_urlsafe(24))
        self._state = "server-first"
        return username

    def _check_cb_flag(self, flag: str) -> None:
        if flag == "n":
            if self.plus:
                raise SASLFailure("malformed-request", "-PLUS selected without channel binding")
        elif flag == "y":
            if self.plus:
                raise SASLFailure("malformed-request", "-PLUS selected without channel binding")
            if self._cb_available:
                # The client could bind and we offered -PLUS, yet it thinks we
                # did not: someone removed it from the feature list.
                raise SASLFailure("not-authorized", "channel binding downgrade detected")
        elif flag.startswith("p="):
            if not self.plus:
                raise SASLFailure("malformed-request", "channel binding requires a -PLUS mechanism")
            cb_name = flag[2:]
            if not _CB_NAME.fullmatch(cb_name):
                raise SASLFailure("malformed-request", "bad channel binding name")
            if cb_name != CB_TYPE:
                raise SASLFailure("malformed-request", f"unsupported channel binding {cb_name!r}")
            self._uses_cb = True
        else:
            raise SASLFailure("malformed-request", "bad GS2 channel binding flag")

    def _fake_credentials(self) -> ScramCredentials:
        username = (self.username or "").encode("utf-8")
        key = _hmac(self._secret, self.hash_name.encode() + b"\x00" + username, "sha256")
        size = hashlib.new(self._algorithm).digest_size
        return ScramCredentials(
            salt=_hmac(key, b"salt", "sha256")[:SALT_BYTES],
            iterations=self._fake_iterations,
            stored_key=_hmac(key, b"stored", "sha256")[:size],
            server_key=_hmac(key, b"server", "sha256")[:size],
        )

    def server_first(self, creds: ScramCredentials | None) -> bytes:
        """Build the challenge; pass None for an unknown user."""
        self._expect("server-first")
        self._known_user = creds is not None
        self._creds = creds if creds is not None else self._fake_credentials()
        self._server_first = (
            f"r={self._nonce},s={_b64encode(self._creds.salt)},i={self._creds.iterations}"
        )
        self._state = "client-final"
        return self._server_first.encode("ascii")

    def client_final(self, data: bytes) -> bytes:
        """Verify the client-final-message and return the server-final-message."""
        self._expect("client-final")
        try:
            result = self._client_final(data)
        except SASLFailure:
            self._state = "failed"
            raise
        self._state = "done"
        return result

    def _client_final(self, data: bytes) -> bytes:
        text = _decode_utf8(data)
        without_proof, sep, proof_b64 = text.rpartition(",p=")
        if not sep:
            raise SASLFailure("malformed-request", "missing proof")
        attrs = without_proof.split(",")
        if len(attrs) < 2 or not attrs[0].startswith("c=") or not attrs[1].startswith("r="):
            raise SASLFailure("malformed-request", "expected c= and r= attributes")
        for extension in attrs[2:]:
            if not _ATTR.match(extension):
                raise SASLFailure("malformed-request", "bad attribute in client-final-message")
        cbind_input = _b64decode(attrs[0][2:], "channel binding")
        proof = _b64decode(proof_b64, "proof")
        creds = self._creds
        if creds is None:
            raise RuntimeError("server_first was not called")
        if len(proof) != len(creds.stored_key):
            raise SASLFailure("malformed-request", "proof has the wrong length")

        if not hmac.compare_digest(attrs[1][2:].encode(), self._nonce.encode()):
            raise SASLFailure("not-authorized", "nonce mismatch")
        cb_data = (self._cb_data or b"") if self._uses_cb else b""
        expected_cb = self._gs2_header + cb_data
        if not hmac.compare_digest(cbind_input, expected_cb):
            raise SASLFailure("not-authorized", "channel binding mismatch")

        auth_message = f"{self._client_first_bare},{self._server_first},{without_proof}".encode()
        signature = _hmac(creds.stored_key, auth_message, self._algorithm)
        client_key = bytes(a ^ b for a, b in zip(proof, signature, strict=True))
        computed = hashlib.new(self._algorithm, client_key).digest()
        # Evaluate the comparison even for unknown users so timing is the same.
        matches = hmac.compare_digest(computed, creds.stored_key)
        if not (matches and self._known_user):
            raise SASLFailure("not-authorized", "invalid credentials")
        server_signature = _hmac(creds.server_key, auth_message, self._algorithm)
        return b"v=" + base64.b64encode(server_signature)


class PlainServer:
    """PLAIN (RFC 4616) message parsing; verification is :func:`verify_plain`."""

    @staticmethod
    def parse(data: bytes) -> tuple[str | None, str, str]:
        """Split a PLAIN message into (authzid, authcid, password).

        The authcid is prepared with UsernameCaseMapped; the password is
        returned as sent, since :func:`verify_plain` prepares it itself.
        """
        text = _decode_utf8(data)
        fields = text.split("\x00")
        if len(fields) != 3:
            raise SASLFailure("malformed-request", "expected authzid NUL authcid NUL password")
        authzid, authcid, password = fields
        if not authcid:
            raise SASLFailure("malformed-request", "empty authcid")
        if not password:
            raise SASLFailure("malformed-request", "empty password")
        return (authzid or None, _prepare_username(authcid), password)
