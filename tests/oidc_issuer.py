"""A small OpenID Connect issuer for the SSO tests: a real HTTP server on loopback.

It serves discovery, /authorize (approving its one configured user at once), /token,
/jwks and /userinfo, and signs ID tokens (RS256) with a key made when it starts. Set
``misbehaviour`` to one of MISBEHAVIOURS to make it fail the way real issuers do; "unreachable"
is ``stop()``.
"""

import base64
import hashlib
import json
import secrets
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlencode, urlsplit

import jwt
from cryptography.hazmat.primitives.asymmetric import rsa

MISBEHAVIOURS = {"bad_signature", "wrong_audience", "wrong_issuer", "expired", "token_error"}
KID = "stub-key-1"


def _s256(verifier: str | None) -> str:
    """PKCE's S256 code challenge of a verifier (RFC 7636)."""
    digest = hashlib.sha256((verifier or "").encode()).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode()


def _rsa_key():
    return rsa.generate_private_key(public_exponent=65537, key_size=2048)


class StubIssuer:
    """An OpenID Connect provider for one client and one user, run in a thread."""

    def __init__(self, *, client_id: str, secret: str, user: dict):
        self.client_id = client_id
        self.secret = secret
        self.user = user
        self.misbehaviour = ""
        self.key = _rsa_key()
        self.codes: dict[str, dict] = {}
        self.access_tokens: dict[str, dict] = {}
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(self))
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}"
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)

    def start(self) -> "StubIssuer":
        self.thread.start()
        return self

    def stop(self) -> None:
        """Shuts the server and closes its socket: from then on the issuer is unreachable."""
        if self.thread.is_alive():
            self.server.shutdown()
            self.thread.join(timeout=5)
        self.server.server_close()

    def discovery(self) -> dict:
        return {
            "issuer": self.url,
            "authorization_endpoint": f"{self.url}/authorize",
            "token_endpoint": f"{self.url}/token",
            "userinfo_endpoint": f"{self.url}/userinfo",
            "jwks_uri": f"{self.url}/jwks",
            "response_types_supported": ["code"],
            "subject_types_supported": ["public"],
            "id_token_signing_alg_values_supported": ["RS256"],
            "token_endpoint_auth_methods_supported": ["client_secret_post", "client_secret_basic"],
            "code_challenge_methods_supported": ["S256"],
        }

    def jwks(self) -> dict:
        jwk = jwt.algorithms.RSAAlgorithm.to_jwk(self.key.public_key(), as_dict=True)
        return {"keys": [{**jwk, "kid": KID, "alg": "RS256", "use": "sig"}]}

    def authorize(self, query: dict) -> str:
        """Approves the configured user: the URL the browser is sent back to."""
        if query.get("client_id") != self.client_id or query.get("response_type") != "code":
            raise ValueError("unknown client or response type")
        code = secrets.token_urlsafe(16)
        self.codes[code] = {
            "redirect_uri": query["redirect_uri"],
            "nonce": query.get("nonce"),
            "code_challenge": query.get("code_challenge"),
        }
        answer = {"code": code, "state": query.get("state", "")}
        return f"{query['redirect_uri']}?{urlencode(answer)}"

    def token(self, form: dict, basic: tuple[str, str] | None) -> dict:
        client_id, secret = basic or (form.get("client_id"), form.get("client_secret"))
        if (client_id, secret) != (self.client_id, self.secret):
            raise PermissionError("invalid_client")
        grant = self.codes.pop(form.get("code", ""), None)
        if grant is None or grant["redirect_uri"] != form.get("redirect_uri"):
            raise PermissionError("invalid_grant")
        if grant["code_challenge"] and grant["code_challenge"] != _s256(form.get("code_verifier")):
            raise PermissionError("invalid_grant")
        access_token = secrets.token_urlsafe(24)
        self.access_tokens[access_token] = self.user
        return {
            "access_token": access_token,
            "token_type": "Bearer",
            "expires_in": 3600,
            "id_token": self.id_token(nonce=grant["nonce"]),
        }

    def id_token(self, *, nonce: str | None) -> str:
        now = int(time.time())
        claims = {
            "iss": self.url,
            "aud": self.client_id,
            "sub": self.user["sub"],
            "email": self.user["email"],
            "email_verified": self.user.get("email_verified", True),
            "iat": now,
            "exp": now + 300,
        }
        if nonce:
            claims["nonce"] = nonce
        key = self.key
        if self.misbehaviour == "bad_signature":
            key = _rsa_key()
        elif self.misbehaviour == "wrong_audience":
            claims["aud"] = "another-client"
        elif self.misbehaviour == "wrong_issuer":
            claims["iss"] = "http://issuer.invalid"
        elif self.misbehaviour == "expired":
            claims.update(iat=now - 3600, exp=now - 1800)
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": KID})


def _handler(issuer: StubIssuer):
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format, *args):
            pass

        def do_GET(self):
            url = urlsplit(self.path)
            query = {key: values[0] for key, values in parse_qs(url.query).items()}
            if url.path == "/.well-known/openid-configuration":
                return self._json(200, issuer.discovery())
            if url.path == "/jwks":
                return self._json(200, issuer.jwks())
            if url.path == "/authorize":
                try:
                    location = issuer.authorize(query)
                except (KeyError, ValueError):
                    return self._json(400, {"error": "invalid_request"})
                self.send_response(302)
                self.send_header("Location", location)
                self.send_header("Content-Length", "0")
                self.end_headers()
                return None
            if url.path == "/userinfo":
                scheme, _, token = self.headers.get("Authorization", "").partition(" ")
                user = issuer.access_tokens.get(token) if scheme == "Bearer" else None
                if user is None:
                    return self._json(401, {"error": "invalid_token"})
                return self._json(200, user)
            return self._json(404, {"error": "not_found"})

        def do_POST(self):
            if urlsplit(self.path).path != "/token":
                return self._json(404, {"error": "not_found"})
            if issuer.misbehaviour == "token_error":
                return self._json(500, {"error": "server_error"})
            length = int(self.headers.get("Content-Length") or 0)
            form = {k: v[0] for k, v in parse_qs(self.rfile.read(length).decode()).items()}
            try:
                return self._json(200, issuer.token(form, self._basic()))
            except PermissionError as exc:
                return self._json(400 if str(exc) == "invalid_grant" else 401, {"error": str(exc)})

        def _basic(self) -> tuple[str, str] | None:
            scheme, _, value = self.headers.get("Authorization", "").partition(" ")
            if scheme != "Basic":
                return None
            client_id, _, secret = base64.b64decode(value).decode().partition(":")
            return unquote(client_id), unquote(secret)

        def _json(self, status: int, body: dict) -> None:
            data = json.dumps(body).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler
