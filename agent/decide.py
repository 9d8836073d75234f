"""The sync decision of SPEC section 5 as a pure function: facts in, a plan out."""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional


class Place(Enum):
    """What is at the configured path."""

    ABSENT = "missing or empty"  # nothing there, or an empty directory
    NOT_GIT = "not a git checkout"
    FOREIGN = "a checkout of another repository"
    CHECKOUT = "a checkout of this repository"


class Relation(Enum):
    """How the local HEAD L stands to the remote head R (known only after a fetch)."""

    EQUAL = "equal"
    BEHIND = "behind"  # L is an ancestor of R
    AHEAD = "ahead"  # R is an ancestor of L
    DIVERGED = "diverged"


class Action(Enum):
    CLONE = "clone"
    NOTHING = "nothing"  # up to date (perhaps ahead): touch nothing
    FETCH = "fetch"  # learn the relation, then decide again
    FAST_FORWARD = "fast-forward"  # git merge --ff-only; git itself refuses to overwrite local work
    RESET = "reset"  # backup ref + stash of dirty work, then reset --hard R
    BLOCK = "block"  # leave everything as it is and say why
    FAIL = "fail"  # an error: touch nothing


@dataclass(frozen=True)
class Facts:
    """Everything the decision needs; `relation` is None until the remote head was fetched."""

    place: Place
    mode: str = "ff-only"
    local: Optional[str] = None
    remote: Optional[str] = None
    remote_error: Optional[str] = None
    on_branch: bool = True  # HEAD is the followed branch (not detached, not another branch)
    relation: Optional[Relation] = None
    dirty: bool = False  # tracked changes or untracked (not ignored) files


@dataclass(frozen=True)
class Plan:
    action: Action
    reason: str = ""


def plan_sync(f: Facts) -> Plan:
    """Decide what to do with one checkout (SPEC section 5)."""
    if f.place is Place.ABSENT:
        if f.remote_error:
            return Plan(Action.FAIL, f.remote_error)
        return Plan(Action.CLONE)
    if f.place is Place.NOT_GIT:
        return Plan(Action.FAIL, "the path exists but is not a git checkout; not touching it")
    if f.place is Place.FOREIGN:
        return Plan(Action.FAIL, "the checkout's origin is another repository; not touching it")
    if f.remote_error:
        return Plan(Action.FAIL, f.remote_error)
    if f.local is not None and f.local == f.remote:
        return Plan(Action.NOTHING)
    if not f.on_branch:
        return Plan(Action.BLOCK, "HEAD is not on the followed branch")
    if f.relation is None:
        return Plan(Action.FETCH)
    reset = f.mode == "reset"
    if f.relation is Relation.EQUAL:
        return Plan(Action.NOTHING)
    if f.relation is Relation.BEHIND:
        if reset and f.dirty:
            return Plan(Action.RESET, "behind, with local changes")
        return Plan(Action.FAST_FORWARD)
    if f.relation is Relation.AHEAD:
        if reset:
            return Plan(Action.RESET, "local commits not on the remote")
        return Plan(Action.NOTHING, "ahead")
    if reset:
        return Plan(Action.RESET, "diverged from the remote")
    return Plan(Action.BLOCK, "diverged")
