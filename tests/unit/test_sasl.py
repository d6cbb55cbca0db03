"""Tests for the sans-IO SASL mechanisms (SCRAM, SCRAM-PLUS, PLAIN)."""

from __future__ import annotations

import base64
import datetime
import hashlib
import hmac
import secrets
from typing import NamedTuple

import precis_i18n
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, ed25519, rsa
from cryptography.x509.oid import NameOID

from parley.xmpp.sasl import (
    HASHES,
    PlainServer,
    SASLFailure,
    ScramCredentials,
    ScramServer,
    derive_scram_credentials,
    tls_server_end_point,
    verify_plain,
)

CB_DATA = b"\x01" * 32
PLUS_FLAG = "p=tls-server-end-point"


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


class ScramClient:
    """Just enough of a SCRAM client to drive the server under test."""

    def __init__(
        self,
        hash_name: str,
        username: str,
        password: str,
        *,
        flag: str = "n",
        cb_data: bytes = b"",
        authzid: str | None = None,
        nonce: str | None = None,
    ) -> None:
        self.algorithm = HASHES[hash_name]
        self.username = username
        self.password = precis_i18n.get_profile("OpaqueString").enforce(password)
        self.flag = flag
        self.cb_data = cb_data
        self.authzid = authzid
        self.nonce = nonce or secrets.token_urlsafe(18)
        self.gs2_header = ""
        self.bare = ""
        self.auth_message = b""
        self.salted = b""

    @staticmethod
    def saslname(value: str) -> str:
        return value.replace("=", "=3D").replace(",", "=2C")

    def first(self) -> bytes:
        authz = f"a={self.saslname(self.authzid)}" if self.authzid is not None else ""
        self.gs2_header = f"{self.flag},{authz},"
        self.bare = f"n={self.saslname(self.username)},r={self.nonce}"
        return (self.gs2_header + self.bare).encode()

    def final(self, server_first: bytes) -> bytes:
        attrs = dict(item.split("=", 1) for item in server_first.decode().split(","))
        assert attrs["r"].startswith(self.nonce)
        assert len(attrs["r"]) > len(self.nonce)
        salt = base64.b64decode(attrs["s"])
        iterations = int(attrs["i"])
        self.salted = hashlib.pbkdf2_hmac(self.algorithm, self.password.encode(), salt, iterations)
        cbind = self.gs2_header.encode()
        if self.flag.startswith("p="):
            cbind += self.cb_data
        without_proof = f"c={b64(cbind)},r={attrs['r']}"
        self.auth_message = f"{self.bare},{server_first.decode()},{without_proof}".encode()
        client_key = hmac.new(self.salted, b"Client Key", self.algorithm).digest()
        stored_key = hashlib.new(self.algorithm, client_key).digest()
        signature = hmac.new(stored_key, self.auth_message, self.algorithm).digest()
        proof = bytes(a ^ b for a, b in zip(client_key, signature, strict=True))
        return f"{without_proof},p={b64(proof)}".encode()

    def verify(self, server_final: bytes) -> None:
        server_key = hmac.new(self.salted, b"Server Key", self.algorithm).digest()
        expected = hmac.new(server_key, self.auth_message, self.algorithm).digest()
        assert server_final == b"v=" + base64.b64encode(expected)


def make_server(
    hash_name: str = "SHA-256",
    *,
    plus: bool = False,
    cb_available: bool = False,
    nonce: str | None = None,
    secret: bytes | None = None,
    fake_iterations: int = 4096,
) -> ScramServer:
    return ScramServer(
        hash_name,
        plus=plus,
        cb_data=CB_DATA if plus or cb_available else None,
        cb_available=cb_available,
        nonce=nonce,
        secret=secret,
        fake_iterations=fake_iterations,
    )


def exchange(server: ScramServer, client: ScramClient, creds: ScramCredentials | None) -> bytes:
    assert server.client_first(client.first()) == client.username.lower()
    final = server.server_first(creds)
    return server.client_final(client.final(final))


@pytest.fixture(scope="module")
def creds() -> dict[str, ScramCredentials]:
    return {name: derive_scram_credentials("pencil", name) for name in HASHES}


class Vector(NamedTuple):
    client_first: bytes
    server_nonce: str
    salt: str
    server_first: bytes
    client_final: bytes
    server_final: bytes


# RFC 5802 section 5 and RFC 7677 section 3.
VECTORS = {
    "SHA-1": Vector(
        client_first=b"n,,n=user,r=fyko+d2lbbFgONRv9qkxdawL",
        server_nonce="3rfcNHYJY1ZVvWVs7j",
        salt="QSXCR+Q6sek8bf92",
        server_first=b"r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,s=QSXCR+Q6sek8bf92,i=4096",
        client_final=(
            b"c=biws,r=fyko+d2lbbFgONRv9qkxdawL3rfcNHYJY1ZVvWVs7j,p=v0X8v3Bz2T0CJGbJQyF0X+HI4Ts="
        ),
        server_final=b"v=rmF9pqV8S7suAoZWja4dJRkFsKQ=",
    ),
    "SHA-256": Vector(
        client_first=b"n,,n=user,r=rOprNGfwEbeRWgbNEkqO",
        server_nonce="%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0",
        salt="W22ZaJ0SNY7soEsUEjb6gQ==",
        server_first=(
            b"r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"s=W22ZaJ0SNY7soEsUEjb6gQ==,i=4096"
        ),
        client_final=(
            b"c=biws,r=rOprNGfwEbeRWgbNEkqO%hvYDpWUa2RaTCAfuxFIlj)hNlF$k0,"
            b"p=dHzbZapWIk4jUhN+Ute9ytag9zjfMHgsqmmiz7AndVQ="
        ),
        server_final=b"v=6rriTRBi23WpRR/wtup+mMhUZUn/dB5nLTJRsjl95G4=",
    ),
}


class TestVectors:
    @pytest.mark.parametrize("hash_name", sorted(VECTORS))
    def test_rfc_exchange(self, hash_name: str) -> None:
        vector = VECTORS[hash_name]
        creds = derive_scram_credentials(
            "pencil", hash_name, salt=base64.b64decode(vector.salt), iterations=4096
        )
        server = ScramServer(
            hash_name, plus=False, cb_data=None, cb_available=False, nonce=vector.server_nonce
        )
        assert server.client_first(vector.client_first) == "user"
        assert server.authzid is None
        assert server.server_first(creds) == vector.server_first
        assert server.client_final(vector.client_final) == vector.server_final

    @pytest.mark.parametrize("hash_name", sorted(VECTORS))
    def test_verify_plain_against_vector_salt(self, hash_name: str) -> None:
        salt = base64.b64decode(VECTORS[hash_name].salt)
        creds = derive_scram_credentials("pencil", hash_name, salt=salt)
        assert verify_plain("pencil", creds, hash_name)
        assert not verify_plain("pencil2", creds, hash_name)


class TestDerive:
    @pytest.mark.parametrize(("hash_name", "size"), [("SHA-1", 20), ("SHA-256", 32)])
    def test_shape(self, hash_name: str, size: int) -> None:
        creds = derive_scram_credentials("pencil", hash_name, iterations=1000)
        assert len(creds.stored_key) == size
        assert len(creds.server_key) == size
        assert len(creds.salt) == 16
        assert creds.iterations == 1000

    def test_matches_definition(self) -> None:
        salt = b"salt-salt-salt"
        creds = derive_scram_credentials("pencil", "SHA-256", salt=salt, iterations=10)
        salted = hashlib.pbkdf2_hmac("sha256", b"pencil", salt, 10)
        client_key = hmac.new(salted, b"Client Key", "sha256").digest()
        assert creds.stored_key == hashlib.sha256(client_key).digest()
        assert creds.server_key == hmac.new(salted, b"Server Key", "sha256").digest()

    def test_random_salt(self) -> None:
        first = derive_scram_credentials("pencil", "SHA-1")
        second = derive_scram_credentials("pencil", "SHA-1")
        assert first.salt != second.salt
        assert first.stored_key != second.stored_key

    def test_password_is_prepared(self) -> None:
        # OpaqueString maps non-ASCII spaces to U+0020 and applies NFC.
        salt = b"0123456789abcdef"
        mapped = derive_scram_credentials("pen\u00a0cil\u0065\u0301", "SHA-1", salt=salt)
        plain = derive_scram_credentials("pen cil\u00e9", "SHA-1", salt=salt)
        assert mapped == plain

    @pytest.mark.parametrize(
        ("password", "hash_name", "kwargs"),
        [
            ("", "SHA-1", {}),
            ("a\u0000b", "SHA-1", {}),
            ("pencil", "MD5", {}),
            ("pencil", "SHA-1", {"iterations": 0}),
            ("pencil", "SHA-1", {"salt": b""}),
        ],
    )
    def test_rejects(self, password: str, hash_name: str, kwargs: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            derive_scram_credentials(password, hash_name, **kwargs)  # type: ignore[arg-type]


class TestFullExchange:
    @pytest.mark.parametrize("hash_name", sorted(HASHES))
    @pytest.mark.parametrize(
        ("plus", "cb_available", "flag"),
        [
            (False, False, "n"),  # neither side binds
            (False, True, "n"),  # server offers -PLUS, client cannot bind
            (False, False, "y"),  # client could bind, server offers no -PLUS
            (True, True, PLUS_FLAG),
        ],
    )
    def test_success(
        self,
        creds: dict[str, ScramCredentials],
        hash_name: str,
        plus: bool,
        cb_available: bool,
        flag: str,
    ) -> None:
        server = make_server(hash_name, plus=plus, cb_available=cb_available)
        client = ScramClient(hash_name, "user", "pencil", flag=flag, cb_data=CB_DATA)
        client.verify(exchange(server, client, creds[hash_name]))
        assert server.username == "user"
        expected = f"SCRAM-{hash_name}{'-PLUS' if plus else ''}"
        assert server.mechanism == expected

    @pytest.mark.parametrize("hash_name", sorted(HASHES))
    def test_plus_with_real_certificate(self, hash_name: str) -> None:
        cert = make_cert(hashes.SHA384())
        cb = tls_server_end_point(cert)
        creds = derive_scram_credentials("pencil", hash_name)
        server = ScramServer(hash_name, plus=True, cb_data=cb, cb_available=True)
        client = ScramClient(hash_name, "user", "pencil", flag=PLUS_FLAG, cb_data=cb)
        client.verify(exchange(server, client, creds))

    def test_username_prepared_and_authzid(self, creds: dict[str, ScramCredentials]) -> None:
        server = make_server()
        client = ScramClient("SHA-256", "USER", "pencil", authzid="admin@example.com")
        client.verify(exchange(server, client, creds["SHA-256"]))
        assert server.username == "user"
        assert server.authzid == "admin@example.com"

    def test_saslname_escapes(self) -> None:
        server = make_server()
        assert server.client_first(b"n,a=x=2Cy=3Dz,n=a=3D=2Cb,r=abc") == "a=,b"
        assert server.authzid == "x,y=z"

    def test_escaped_escape(self) -> None:
        server = make_server()
        assert server.client_first(b"n,,n=a=3D2Cb,r=abc") == "a=2cb"

    def test_password_preparation_in_exchange(self) -> None:
        creds = derive_scram_credentials("pen cil", "SHA-1")
        server = make_server("SHA-1")
        client = ScramClient("SHA-1", "user", "pen\u00a0cil")
        client.verify(exchange(server, client, creds))

    def test_extensions_are_ignored(self, creds: dict[str, ScramCredentials]) -> None:
        server = make_server()
        client = ScramClient("SHA-256", "user", "pencil")
        server.client_first(client.first() + b",x=ext")
        client.bare += ",x=ext"
        final = client.final(server.server_first(creds["SHA-256"]))
        client.verify(server.client_final(final))

    def test_random_server_nonce(self, creds: dict[str, ScramCredentials]) -> None:
        challenges = set()
        for _ in range(2):
            server = make_server()
            server.client_first(b"n,,n=user,r=clientnonce")
            challenge = server.server_first(creds["SHA-256"]).decode()
            assert challenge.startswith("r=clientnonce")
            nonce = challenge.split(",")[0][2:]
            assert len(nonce) >= len("clientnonce") + 24
            assert "," not in nonce
            challenges.add(nonce)
        assert len(challenges) == 2


class TestAuthenticationFailures:
    def test_wrong_password(self, creds: dict[str, ScramCredentials]) -> None:
        server = make_server()
        client = ScramClient("SHA-256", "user", "pencil2")
        server.client_first(client.first())
        with pytest.raises(SASLFailure) as info:
            server.client_final(client.final(server.server_first(creds["SHA-256"])))
        assert info.value.condition == "not-authorized"

    def test_wrong_channel_binding_data(self, creds: dict[str, ScramCredentials]) -> None:
        server = make_server(plus=True, cb_available=True)
        client = ScramClient("SHA-256", "user", "pencil", flag=PLUS_FLAG, cb_data=b"\x02" * 32)
        server.client_first(client.first())
        with pytest.raises(SASLFailure, match="channel binding") as info:
            server.client_final(client.final(server.server_first(creds["SHA-256"])))
        assert info.value.condition == "not-authorized"

    def test_channel_binding_data_omitted(self, creds: dict[str, ScramCredentials]) -> None:
        server = make_server(plus=True, cb_available=True)
        client = ScramClient("SHA-256", "user", "pencil", flag=PLUS_FLAG, cb_data=b"")
        server.client_first(client.first())
        with pytest.raises(SASLFailure) as info:
            server.client_final(client.final(server.server_first(creds["SHA-256"])))
        assert info.value.condition == "not-authorized"

    def test_gs2_header_tampered_in_c(self, creds: dict[str, ScramCredentials]) -> None:
        # c= must repeat the exact GS2 header, authzid included.
        server = make_server()
        client = ScramClient("SHA-256", "user", "pencil", authzid="admin")
        server.client_first(client.first())
        client.gs2_header = "n,,"
        with pytest.raises(SASLFailure) as info:
            server.client_final(client.final(server.server_first(creds["SHA-256"])))
        assert info.value.condition == "not-authorized"

    def test_downgrade_detected(self) -> None:
        server = make_server(plus=False, cb_available=True)
        with pytest.raises(SASLFailure, match="downgrade") as info:
            server.client_first(b"y,,n=user,r=abc")
        assert info.value.condition == "not-authorized"

    @pytest.mark.parametrize("hash_name", sorted(HASHES))
    def test_unknown_user(self, hash_name: str) -> None:
        server = make_server(hash_name)
        client = ScramClient(hash_name, "nobody", "pencil")
        server.client_first(client.first())
        challenge = server.server_first(None)
        with pytest.raises(SASLFailure) as info:
            server.client_final(client.final(challenge))
        assert info.value.condition == "not-authorized"

    def test_unknown_user_fails_even_if_proof_matches(
        self, creds: dict[str, ScramCredentials], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        # Make the fake credentials ones the client can satisfy: the exchange
        # must still fail, because the account does not exist.
        server = make_server("SHA-256")
        monkeypatch.setattr(server, "_fake_credentials", lambda: creds["SHA-256"])
        client = ScramClient("SHA-256", "nobody", "pencil")
        server.client_first(client.first())
        with pytest.raises(SASLFailure) as info:
            server.client_final(client.final(server.server_first(None)))
        assert info.value.condition == "not-authorized"

    def test_unknown_user_challenge_is_plausible_and_stable(
        self, creds: dict[str, ScramCredentials]
    ) -> None:
        secret = b"k" * 32

        def challenge(username: str, known: bool, key: bytes = secret) -> dict[str, str]:
            server = make_server("SHA-256", nonce="srv", secret=key)
            server.client_first(f"n,,n={username},r=cli".encode())
            raw = server.server_first(creds["SHA-256"] if known else None).decode()
            return dict(item.split("=", 1) for item in raw.split(","))

        real = challenge("user", True)
        fake = challenge("nobody", False)
        assert fake.keys() == real.keys()
        assert fake["r"] == real["r"] == "clisrv"
        assert fake["i"] == real["i"] == "4096"
        assert len(base64.b64decode(fake["s"])) == len(base64.b64decode(real["s"]))
        # Asking again must give the same salt, or the probe reveals the user.
        assert challenge("nobody", False)["s"] == fake["s"]
        assert challenge("NOBODY", False)["s"] == fake["s"]
        assert challenge("other", False)["s"] != fake["s"]
        assert challenge("nobody", False, b"j" * 32)["s"] != fake["s"]

    def test_fake_iterations(self) -> None:
        server = make_server(fake_iterations=10000)
        server.client_first(b"n,,n=nobody,r=cli")
        assert server.server_first(None).endswith(b",i=10000")


class TestGS2Header:
    @pytest.mark.parametrize(
        ("plus", "cb_available", "message"),
        [
            (True, True, b"n,,n=user,r=abc"),  # -PLUS selected but not used
            (True, True, b"y,,n=user,r=abc"),
            (False, True, b"p=tls-server-end-point,,n=user,r=abc"),  # -PLUS needed
            (False, False, b"p=tls-server-end-point,,n=user,r=abc"),
            (True, True, b"p=tls-unique,,n=user,r=abc"),
            (True, True, b"p=tls-exporter,,n=user,r=abc"),
            (True, True, b"p=,,n=user,r=abc"),
            (True, True, b"p=bad name,,n=user,r=abc"),
            (False, False, b"x,,n=user,r=abc"),
            (False, False, b",,n=user,r=abc"),
            (False, False, b"n,b=admin,n=user,r=abc"),
            (False, False, b"n,a=,n=user,r=abc"),
            (False, False, b"n,a=bad=name,n=user,r=abc"),
        ],
    )
    def test_malformed(self, plus: bool, cb_available: bool, message: bytes) -> None:
        server = make_server(plus=plus, cb_available=cb_available)
        with pytest.raises(SASLFailure) as info:
            server.client_first(message)
        assert info.value.condition == "malformed-request"


class TestMalformedClientFirst:
    @pytest.mark.parametrize(
        "message",
        [
            b"",
            b"n=user,r=abc",  # no GS2 header
            b"n,,",
            b"n,,n=user",  # no nonce
            b"n,,r=abc",  # no username
            b"n,,r=abc,n=user",  # wrong order
            b"n,,n=,r=abc",
            b"n,,n=user,r=",
            b"n,,n=user,r=a\x7fb",
            b"n,,n=us=er,r=abc",
            b"n,,n=us=2c,r=abc",  # escapes are upper case
            b"n,,m=ext,n=user,r=abc",  # mandatory extension
            b"n,,n=user,r=abc,bogus",
            b"n,,n=user,r=abc,",
            b"n,,n=user name,r=abc",  # PRECIS rejects the space
            b"n,,n=\xff,r=abc",  # not UTF-8
        ],
    )
    def test_malformed(self, message: bytes) -> None:
        server = make_server()
        with pytest.raises(SASLFailure) as info:
            server.client_first(message)
        assert info.value.condition == "malformed-request"


class TestMalformedClientFinal:
    @pytest.fixture
    def server(self, creds: dict[str, ScramCredentials]) -> ScramServer:
        server = make_server(nonce="srv")
        server.client_first(b"n,,n=user,r=cli")
        server.server_first(creds["SHA-256"])
        return server

    PROOF = b64(b"\x00" * 32)

    @pytest.mark.parametrize(
        "message",
        [
            b"",
            b"c=biws,r=clisrv",  # no proof
            f"r=clisrv,p={PROOF}".encode(),  # no channel binding
            f"c=biws,p={PROOF}".encode(),  # no nonce
            f"r=clisrv,c=biws,p={PROOF}".encode(),  # wrong order
            f"c=bi!s,r=clisrv,p={PROOF}".encode(),  # bad base64
            f"c=biw,r=clisrv,p={PROOF}".encode(),  # bad padding
            b"c=biws,r=clisrv,p=not*base64",
            f"c=biws,r=clisrv,p={b64(b'short')}".encode(),
            f"c=biws,r=clisrv,bogus,p={PROOF}".encode(),
            b"c=biws,r=clisrv,p=\xff",
        ],
    )
    def test_malformed(self, server: ScramServer, message: bytes) -> None:
        with pytest.raises(SASLFailure) as info:
            server.client_final(message)
        assert info.value.condition == "malformed-request"

    @pytest.mark.parametrize("nonce", ["cli", "clisrvx", "xlisrv", ""])
    def test_nonce_mismatch(self, server: ScramServer, nonce: str) -> None:
        with pytest.raises(SASLFailure, match="nonce") as info:
            server.client_final(f"c=biws,r={nonce},p={self.PROOF}".encode())
        assert info.value.condition == "not-authorized"


class TestStateMachine:
    def test_out_of_order(self, creds: dict[str, ScramCredentials]) -> None:
        server = make_server()
        with pytest.raises(RuntimeError):
            server.server_first(creds["SHA-256"])
        with pytest.raises(RuntimeError):
            server.client_final(b"c=biws,r=x,p=AAAA")
        server.client_first(b"n,,n=user,r=abc")
        with pytest.raises(RuntimeError):
            server.client_first(b"n,,n=user,r=abc")

    def test_no_reuse_after_failure(self) -> None:
        server = make_server()
        with pytest.raises(SASLFailure):
            server.client_first(b"garbage")
        with pytest.raises(RuntimeError):
            server.client_first(b"n,,n=user,r=abc")

    def test_no_reuse_after_success(self, creds: dict[str, ScramCredentials]) -> None:
        server = make_server()
        client = ScramClient("SHA-256", "user", "pencil")
        server.client_first(client.first())
        final = client.final(server.server_first(creds["SHA-256"]))
        server.client_final(final)
        with pytest.raises(RuntimeError):
            server.client_final(final)

    def test_plus_without_binding_data(self) -> None:
        with pytest.raises(SASLFailure) as info:
            ScramServer("SHA-1", plus=True, cb_data=None, cb_available=True)
        assert info.value.condition == "invalid-mechanism"

    @pytest.mark.parametrize(
        "kwargs",
        [
            {"hash_name": "MD5", "plus": False, "cb_data": None, "cb_available": False},
            {
                "hash_name": "SHA-1",
                "plus": False,
                "cb_data": None,
                "cb_available": False,
                "nonce": "a,b",
            },
            {
                "hash_name": "SHA-1",
                "plus": False,
                "cb_data": None,
                "cb_available": False,
                "fake_iterations": 0,
            },
        ],
    )
    def test_bad_construction(self, kwargs: dict[str, object]) -> None:
        with pytest.raises(ValueError):
            ScramServer(**kwargs)  # type: ignore[arg-type]


class TestSASLFailure:
    def test_attributes(self) -> None:
        failure = SASLFailure("not-authorized", "bad proof")
        assert failure.condition == "not-authorized"
        assert failure.text == "bad proof"
        assert "not-authorized" in str(failure)
        assert SASLFailure("aborted").text is None

    def test_unknown_condition(self) -> None:
        with pytest.raises(ValueError):
            SASLFailure("no-such-condition")


class TestPlain:
    @pytest.mark.parametrize(
        ("message", "expected"),
        [
            (b"\x00user\x00pencil", (None, "user", "pencil")),
            (b"admin@example.com\x00User\x00pencil", ("admin@example.com", "user", "pencil")),
            ("\x00m\u00fcller\x00p\u00e4ss word".encode(), (None, "m\u00fcller", "p\u00e4ss word")),
        ],
    )
    def test_parse(self, message: bytes, expected: tuple[str | None, str, str]) -> None:
        assert PlainServer.parse(message) == expected

    @pytest.mark.parametrize(
        "message",
        [
            b"",
            b"userpencil",
            b"user\x00pencil",
            b"\x00user\x00pencil\x00",
            b"a\x00b\x00c\x00d",
            b"\x00\x00pencil",
            b"\x00user\x00",
            b"\x00\x00",
            b"\x00us er\x00pencil",
            b"\x00user\x00pen\xffcil",
        ],
    )
    def test_malformed(self, message: bytes) -> None:
        with pytest.raises(SASLFailure) as info:
            PlainServer.parse(message)
        assert info.value.condition == "malformed-request"

    @pytest.mark.parametrize("hash_name", sorted(HASHES))
    def test_verify_plain(self, creds: dict[str, ScramCredentials], hash_name: str) -> None:
        assert verify_plain("pencil", creds[hash_name], hash_name)
        assert not verify_plain("Pencil", creds[hash_name], hash_name)
        assert not verify_plain("", creds[hash_name], hash_name)
        assert not verify_plain("pen\u0000cil", creds[hash_name], hash_name)

    def test_verify_plain_prepares_password(self) -> None:
        creds = derive_scram_credentials("p\u00e4ss word", "SHA-256")
        _, _, password = PlainServer.parse("\x00user\x00pa\u0308ss\u00a0word".encode())
        assert verify_plain(password, creds, "SHA-256")

    def test_verify_plain_wrong_hash_name(self, creds: dict[str, ScramCredentials]) -> None:
        assert not verify_plain("pencil", creds["SHA-256"], "SHA-1")
        with pytest.raises(ValueError):
            verify_plain("pencil", creds["SHA-256"], "SHA-512")


def make_cert(
    algorithm: hashes.HashAlgorithm | None,
    key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | None = None,
) -> bytes:
    private_key: ec.EllipticCurvePrivateKey | rsa.RSAPrivateKey | ed25519.Ed25519PrivateKey
    if algorithm is None:
        private_key = ed25519.Ed25519PrivateKey.generate()
    else:
        private_key = key or ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "example.com")])
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(private_key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(private_key, algorithm)
    )
    return cert.public_bytes(serialization.Encoding.DER)


class TestTLSServerEndPoint:
    def test_sha256_signed(self) -> None:
        der = make_cert(hashes.SHA256())
        assert tls_server_end_point(der) == hashlib.sha256(der).digest()

    def test_sha384_signed(self) -> None:
        der = make_cert(hashes.SHA384())
        assert tls_server_end_point(der) == hashlib.sha384(der).digest()

    def test_sha512_signed(self) -> None:
        der = make_cert(hashes.SHA512())
        assert tls_server_end_point(der) == hashlib.sha512(der).digest()

    @pytest.mark.parametrize(("weak_oid_arc", "name"), [(b"\x05", "sha1"), (b"\x04", "md5")])
    def test_weak_hash_uses_sha256(self, weak_oid_arc: bytes, name: str) -> None:
        # Current OpenSSL builds will not sign with SHA-1 or MD5, so relabel a
        # sha256WithRSAEncryption certificate: the OIDs differ only in the
        # final arc, and the signature itself is never checked here.
        key = rsa.generate_private_key(public_exponent=65537, key_size=1024)
        der = make_cert(hashes.SHA256(), key)
        sha256_rsa = bytes.fromhex("06092a864886f70d01010b")
        assert der.count(sha256_rsa) == 2
        relabelled = der.replace(sha256_rsa, sha256_rsa[:-1] + weak_oid_arc)
        cert = x509.load_der_x509_certificate(relabelled)
        assert cert.signature_hash_algorithm is not None
        assert cert.signature_hash_algorithm.name == name
        assert tls_server_end_point(relabelled) == hashlib.sha256(relabelled).digest()

    def test_ed25519_is_undefined(self) -> None:
        with pytest.raises(ValueError, match="undefined"):
            tls_server_end_point(make_cert(None))

    def test_garbage(self) -> None:
        with pytest.raises(ValueError):
            tls_server_end_point(b"not a certificate")
