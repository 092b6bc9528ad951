"""Passwords (argon2id), access tokens (JWT, HS256) and API keys."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import jwt
from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from gateway.core.auth import Principal, Role

_hasher = PasswordHasher()  # argon2id with the library's current recommended cost
# Verified against when the user does not exist, so a login for an unknown name
# takes as long as one with a wrong password (no user enumeration by timing).
_DUMMY_HASH = _hasher.hash(secrets.token_hex(16))

MIN_PASSWORD_LENGTH = 10
API_KEY_PREFIX = "pgw_"


def hash_password(password: str) -> str:
    if len(password) < MIN_PASSWORD_LENGTH:
        raise ValueError(f"a password needs at least {MIN_PASSWORD_LENGTH} characters")
    return _hasher.hash(password)


def verify_password(stored_hash: str | None, password: str) -> bool:
    """CPU-heavy by design (~50 ms): call it off the event loop."""
    try:
        return _hasher.verify(stored_hash or _DUMMY_HASH, password) and stored_hash is not None
    except (VerificationError, InvalidHashError):
        return False


class InvalidToken(Exception):
    pass


@dataclass(frozen=True, slots=True)
class TokenIssuer:
    secret: str
    ttl: timedelta
    algorithm: str = "HS256"

    def issue(
        self,
        principal: Principal,
        now: datetime | None = None,
        *,
        csrf: str | None = None,
        ttl: timedelta | None = None,
    ) -> str:
        """A signed token for `principal`. A browser session's token (`csrf` given)
        carries a digest of its CSRF value, so only that value unlocks its writes."""
        now = now or datetime.now(UTC)
        claims: dict[str, object] = {
            "sub": str(principal.user_id),
            "name": principal.name,
            "role": principal.role.value,
            "iat": now,
            "exp": now + (ttl or self.ttl),
        }
        if principal.tenant_id is not None:
            claims["tenant"] = principal.tenant_id
        if csrf is not None:
            claims["csrf"] = csrf_digest(csrf)
        return jwt.encode(claims, self.secret, algorithm=self.algorithm)

    def verify(self, token: str) -> Principal:
        """The principal a valid, unexpired token names; InvalidToken otherwise."""
        return self._verify(token)[0]

    def verify_session(self, token: str) -> tuple[Principal, str, datetime]:
        """The principal of a browser session's token, its CSRF digest and when it
        expires; InvalidToken for any other token (a bearer token has no CSRF binding)."""
        principal, claims = self._verify(token)
        digest = claims.get("csrf")
        exp = claims.get("exp")
        if not isinstance(digest, str) or not isinstance(exp, int | float):
            raise InvalidToken("the session is not valid")
        return principal, digest, datetime.fromtimestamp(exp, UTC)

    def _verify(self, token: str) -> tuple[Principal, dict[str, object]]:
        try:
            claims = jwt.decode(
                token,
                self.secret,
                algorithms=[self.algorithm],
                options={"require": ["sub", "exp", "role"]},
            )
            return Principal(
                user_id=int(claims["sub"]),
                name=str(claims.get("name", "")),
                role=Role(claims["role"]),
                tenant_id=claims.get("tenant"),
            ), claims
        except jwt.ExpiredSignatureError:
            raise InvalidToken("the token has expired") from None
        except (jwt.InvalidTokenError, ValueError, KeyError):
            raise InvalidToken("the token is not valid") from None


@dataclass(frozen=True, slots=True)
class NewApiKey:
    key_id: str
    secret: str

    @property
    def token(self) -> str:
        """What the client sends: pgw_<id>_<secret>. Shown once, never stored."""
        return f"{API_KEY_PREFIX}{self.key_id}_{self.secret}"


def new_api_key() -> NewApiKey:
    return NewApiKey(secrets.token_hex(6), secrets.token_urlsafe(32))


def split_api_key(token: str) -> tuple[str, str] | None:
    if not token.startswith(API_KEY_PREFIX):
        return None
    key_id, sep, secret = token[len(API_KEY_PREFIX) :].partition("_")
    if not sep or not key_id or not secret:
        return None
    return key_id, secret


def new_csrf_token() -> str:
    return secrets.token_urlsafe(32)


def csrf_digest(csrf: str) -> str:
    return hashlib.sha256(csrf.encode("utf-8", "surrogatepass")).hexdigest()


def csrf_matches(digest: str, csrf: str) -> bool:
    return hmac.compare_digest(digest, csrf_digest(csrf))


def secret_digest(secret: str) -> bytes:
    return hashlib.sha256(secret.encode()).digest()


def digest_matches(stored: bytes, secret: str) -> bool:
    return hmac.compare_digest(stored, secret_digest(secret))
