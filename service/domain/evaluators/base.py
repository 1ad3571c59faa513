"""What every rule reads and returns: the request (`CheckItem`), its canonical form (`Question`), and
the two kinds of rule: a pure `Evaluator`, and a stateful `Meter` (rate limits, credits) that runs last.

Each rule declares the request inputs (`facts`: CheckItem fields) and the key data (`key_data`:
Credential fields) it reads. The pipeline checks the declarations against these two shapes, and the
remembered-decision key is made of the CheckItem, whose fields must be exactly the declared facts: a
rule with a new input therefore changes the key, or the pipeline refuses to start. A rule whose inputs
matter only to keys holding some datum (`keyed_when`: the IP allow-list and `networks`) keys the memo
by them only for such keys, so a key without a list is not remembered once per client address.
"""

from __future__ import annotations

from datetime import datetime
from typing import NamedTuple, Protocol

from ..decision import Binding, Credential, Decision
from ..resources import Target


class CheckItem(NamedTuple):
    """One question as it arrived: any spelling (`Authorizer.target` makes it canonical).

    A NamedTuple rather than a dataclass: it is the remembered-decision key (with the key digest), and
    a tuple's hash and equality are C code, a dataclass's Python. Every field is a `str`, so two items
    are equal only when every input is."""

    resource: str
    action: str
    workspace_id: str = ""
    # Inputs read only by `keyed_when` rules come last (the pipeline checks): the memo key of a key
    # without the datum is the item without them, a C-level slice.
    client_address: str = ""  # the caller's IP address as the door saw it; "" when unknown


FACTS: frozenset[str] = frozenset(CheckItem._fields)


class Question:
    """One request made canonical for the rules: the item as it arrived, its Target, the workspace it
    acts in (the item's, else the key's own), the time, and (once loaded, for `binding`) the bindings
    of (workspace, resource). A plain slotted class: built once per decision, `bindings` filled in later."""

    __slots__ = ("bindings", "cost", "item", "now", "target", "workspace_id")

    def __init__(self, item: CheckItem, target: Target, workspace_id: str, now: datetime, cost: int = 1) -> None:
        self.item = item
        self.target = target
        self.workspace_id = workspace_id
        self.now = now
        self.bindings: tuple[Binding, ...] = ()
        # What an allowed request spends from a key's credits: an input only meters read, and metered
        # decisions are never remembered, so it is no part of the remembered-decision key.
        self.cost = cost


class Declares(Protocol):
    """What a rule reads, declared: the pipeline derives the remembered-decision key from it."""

    @property
    def facts(self) -> frozenset[str]:
        """CheckItem fields read, directly or through the Target."""

    @property
    def key_data(self) -> frozenset[str]:
        """Credential fields read."""


class Evaluator(Declares, Protocol):
    """One pure rule: None when it lets the request pass, else the refusal."""

    @property
    def keyed_when(self) -> str:
        """"" or a Credential field: without it, the rule passes whatever its facts."""

    def evaluate(self, credential: Credential, question: Question) -> Decision | None: ...


class Meter(Declares, Protocol):
    """A stateful rule (a rate limit, a credit balance). Meters run only after every pure rule allowed
    the request (a refused request consumes nothing) and their answers are never remembered.

    `applies` must be cheap: for a key it does not apply to, the meter costs nothing else. `charge`
    consumes and answers None (or an allowed Decision carrying what it reports, `usage`), or refuses
    having consumed nothing; `refund` gives back what `charge` took, when a later meter refuses the
    same request."""

    def applies(self, credential: Credential) -> bool: ...

    async def charge(self, credential: Credential, question: Question) -> Decision | None: ...

    async def refund(self, credential: Credential, question: Question) -> None: ...
