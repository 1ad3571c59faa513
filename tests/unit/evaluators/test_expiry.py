"""Expiry: the key's own end, and a rotated secret's grace period."""

from keygate.domain.decision import Code
from keygate.domain.evaluators.expiry import EXPIRY

from .helpers import FUTURE, NOW, PAST, ask, cred


def test_live_keys_pass():
    for credential in (cred(), cred(expire_time=FUTURE), cred(secret_expire_time=FUTURE)):
        assert EXPIRY.evaluate(credential, ask(credential)) is None


def test_expired_at_the_instant_and_after():
    for credential in (cred(expire_time=PAST), cred(expire_time=NOW)):
        assert EXPIRY.evaluate(credential, ask(credential)).code is Code.KEY_EXPIRED


def test_a_rotated_secret_past_its_grace_says_so():
    credential = cred(secret_expire_time=PAST)
    refused = EXPIRY.evaluate(credential, ask(credential))
    assert refused.code is Code.KEY_EXPIRED and "rotated" in refused.reason
