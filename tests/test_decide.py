"""SPEC section 5 as one table: every situation, in both modes, through the pure plan_sync."""
import pytest

from agent.decide import Action, Facts, Place, Relation, plan_sync

L, R = "1" * 40, "2" * 40
CHECKOUT = dict(place=Place.CHECKOUT, local=L, remote=R)

# (situation, facts without the mode, ff-only action, reset action)
TABLE = [
    ("absent: clone", dict(place=Place.ABSENT, remote=R), Action.CLONE, Action.CLONE),
    ("absent, remote error: fail", dict(place=Place.ABSENT, remote_error="repository not found"),
     Action.FAIL, Action.FAIL),
    ("not a git checkout: fail", dict(place=Place.NOT_GIT, remote=R), Action.FAIL, Action.FAIL),
    ("foreign origin: fail", dict(place=Place.FOREIGN, local=L, remote=R), Action.FAIL, Action.FAIL),
    ("foreign origin, even when L == R: fail", dict(place=Place.FOREIGN, local=R, remote=R),
     Action.FAIL, Action.FAIL),
    ("remote error: fail", dict(place=Place.CHECKOUT, local=L, remote_error="HTTP 503"), Action.FAIL, Action.FAIL),
    ("L == R: nothing, no fetch", dict(place=Place.CHECKOUT, local=R, remote=R), Action.NOTHING, Action.NOTHING),
    ("L == R, dirty: nothing", dict(place=Place.CHECKOUT, local=R, remote=R, dirty=True),
     Action.NOTHING, Action.NOTHING),
    ("not on the branch: block", dict(CHECKOUT, on_branch=False), Action.BLOCK, Action.BLOCK),
    ("relation unknown: fetch", dict(CHECKOUT), Action.FETCH, Action.FETCH),
    ("equal after fetch: nothing", dict(CHECKOUT, relation=Relation.EQUAL), Action.NOTHING, Action.NOTHING),
    ("behind, clean: fast-forward", dict(CHECKOUT, relation=Relation.BEHIND),
     Action.FAST_FORWARD, Action.FAST_FORWARD),
    ("behind, dirty: fast-forward (git guards) / reset", dict(CHECKOUT, relation=Relation.BEHIND, dirty=True),
     Action.FAST_FORWARD, Action.RESET),
    ("ahead: nothing / reset", dict(CHECKOUT, relation=Relation.AHEAD), Action.NOTHING, Action.RESET),
    ("ahead, dirty: nothing / reset", dict(CHECKOUT, relation=Relation.AHEAD, dirty=True),
     Action.NOTHING, Action.RESET),
    ("diverged: block / reset", dict(CHECKOUT, relation=Relation.DIVERGED), Action.BLOCK, Action.RESET),
    ("diverged, dirty: block / reset", dict(CHECKOUT, relation=Relation.DIVERGED, dirty=True),
     Action.BLOCK, Action.RESET),
]

CASES = [pytest.param(facts, mode, want, id=f"{mode}: {what}")
         for what, facts, ff, reset in TABLE for mode, want in (("ff-only", ff), ("reset", reset))]


@pytest.mark.parametrize("facts, mode, want", CASES)
def test_plan_sync_table(facts, mode, want):
    """Each SPEC section 5 situation gets the planned action of its mode, with a reason where it matters."""
    plan = plan_sync(Facts(mode=mode, **facts))
    assert plan.action is want
    if want in (Action.FAIL, Action.BLOCK):
        assert plan.reason, "a failure or a block must say why"
    if facts.get("remote_error") and facts["place"] is not Place.NOT_GIT:
        assert plan.reason == facts["remote_error"]
    if want is Action.BLOCK and facts.get("relation") is Relation.DIVERGED:
        assert plan.reason == "diverged"
    if want is Action.NOTHING and facts.get("relation") is Relation.AHEAD:
        assert plan.reason == "ahead"
