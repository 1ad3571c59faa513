"""Credentials and questions for the evaluator tests."""

import ipaddress
import uuid
from datetime import UTC, datetime, timedelta

from keygate.domain.decision import Binding, Credential
from keygate.domain.evaluators import CheckItem, Question
from keygate.domain.permissions import Catalog
from keygate.domain.resources import Scope, target

CATALOG = Catalog.build()
NOW = datetime(2025, 6, 1, 12, 0, tzinfo=UTC)
PAST = NOW - timedelta(seconds=1)
FUTURE = NOW + timedelta(days=1)
ME = uuid.uuid4()
OTHER = uuid.uuid4()
RES = "chatflows/abc"
USE = "predictions:create"


def cred(permissions=("chatflows:update", USE), scope=(), workspace="ws1", cidrs=(), **kw) -> Credential:
    return Credential(key_id=ME, key_name="k", workspace_id=workspace, grants=CATALOG.expand(permissions),
                      scope=Scope.compile(scope), expire_time=kw.pop("expire_time", None),
                      disabled=kw.pop("disabled", False),
                      networks=tuple(ipaddress.ip_network(c) for c in cidrs), **kw)


def bind(key_id=OTHER, actions=(USE,)) -> Binding:
    return Binding(resource=RES, key_id=key_id, actions=actions, workspace_id="ws1")


def ask(credential, resource=RES, action=USE, workspace="ws1", address="", bindings=()) -> Question:
    item = CheckItem(resource, action, workspace, address)
    question = Question(item, target(CATALOG, resource, action), workspace or credential.workspace_id, NOW)
    question.bindings = tuple(bindings)
    return question
