"""Random sequences of ledger operations on the real database, with the clock moved, checking the
money invariants after every step (Hypothesis stateful testing).

Operations: purchases (completed, or pending and then settled), grants with or without expiry,
spends and holds (alone, or in batches) and the holds' settlement, refunds of purchases, reversals of
usage, adjustments either way, lots lapsing and holds lapsing (their expiry moved into the past), and
the expiry job. After each step:

- no lot below zero, and no lot holding more than it was granted;
- the balance row = the sum of the lots = the sum of the postings = the sum of completed credits,
  and the held row = the lots' held = the postings' held;
- what the API reads as available = its paid + promotional credits; once the job has run,
  the balance it reads is the row's, and available is the unexpired lots' remaining;
- no credit of a lot was taken (spent or held) at or after the moment the lot expired;
- no purchase refunded beyond its credits or its amount, no usage reversed beyond what it spent,
  and no lot given back more by a usage's reversals than that usage took from it;
- each posting carries the running totals of the postings before it, stamped in write order; the
  books at every instant of the run (`GET /api/balance?at=`) are what was recorded then, and this
  month's statement adds up to the balance row; the usage rollup is what the ledger spent, per
  quarter hour, hour, quarter day and day, and per model;
- every ledger row has exactly one transaction.created event, at most one transaction.updated, and
  its latest event shows its status now; one lot.expired per expiration row; the user's events are
  numbered 1, 2, 3, ... with no number twice, up to the balance row's count.
"""

from __future__ import annotations

import os
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, multiple, rule
from sqlalchemy import text

from transactions_service.ids import utcnow

from .helpers import bearer

# Usage with a model, or without: the rollup keeps both (USAGE_GROUP_KEYS is model by default).
MODELS = st.sampled_from([{}, {"metadata": {"model": "small"}}, {"metadata": {"model": "large"}}])
STATEMENT_LINES = ("purchases", "grants", "usage", "refunds", "reversals", "adjustments", "expirations", "carried_in")
# A batch's entries: credits, a model or none, and whether the entry is the one before it sent again.
BATCH_ENTRIES = st.lists(st.tuples(st.integers(1, 150), MODELS, st.booleans()), min_size=1, max_size=6)
EXAMPLES = int(os.environ.get("PROPERTY_EXAMPLES", "20"))
STEPS = int(os.environ.get("PROPERTY_STEPS", "25"))

SUMS = text(
    "SELECT (SELECT balance FROM user_balances WHERE user_id = :u), (SELECT held FROM user_balances WHERE user_id = :u),"
    " (SELECT coalesce(sum(remaining + held), 0) FROM credit_lots WHERE user_id = :u),"
    " (SELECT coalesce(sum(held), 0) FROM credit_lots WHERE user_id = :u),"
    " (SELECT coalesce(sum(credits), 0) FROM lot_postings WHERE user_id = :u),"
    " (SELECT coalesce(sum(held), 0) FROM lot_postings WHERE user_id = :u),"
    " (SELECT coalesce(sum(credits), 0) FROM user_transactions WHERE user_id = :u AND status = 'completed'),"
    " (SELECT count(*) FROM credit_lots WHERE user_id = :u AND (remaining < 0 OR held < 0 OR remaining + held > credits)),"
    " (SELECT coalesce(sum(remaining), 0) FROM credit_lots WHERE user_id = :u"
    "   AND (expires_at IS NULL OR expires_at > now()))"
)
# Postings that took credits from a lot (a spend, or a hold placed) at or after the lot's expiry.
TAKEN_AFTER_EXPIRY = text(
    "SELECT count(*) FROM lot_postings AS p JOIN credit_lots AS l ON l.id = p.lot_id"
    " JOIN user_transactions AS t ON t.id = p.transaction_id"
    " WHERE p.user_id = :u AND t.type = 'usage' AND (p.held > 0 OR (p.credits < 0 AND p.held = 0))"
    " AND l.expires_at IS NOT NULL AND p.created_at >= l.expires_at"
)
# Given back beyond the original: purchases refunded beyond their credits or amount, usage reversed
# beyond its credits, and lots given back more by a usage's reversals than the usage took from them.
GIVEN_BACK_TOO_MUCH = text(
    "SELECT (SELECT count(*) FROM user_transactions AS p WHERE p.user_id = :u AND p.type = 'purchase'"
    "   AND (p.refunded_amount > p.amount OR p.refunded_amount <> (SELECT coalesce(sum(amount), 0)"
    "     FROM user_transactions WHERE refunds = p.id)"
    "   OR (SELECT coalesce(sum(-credits), 0) FROM user_transactions WHERE refunds = p.id) > p.credits)),"
    " (SELECT count(*) FROM user_transactions AS u WHERE u.user_id = :u AND u.type = 'usage'"
    "   AND (u.reversed_credits <> (SELECT coalesce(sum(credits), 0) FROM user_transactions WHERE reverses = u.id)"
    "   OR u.reversed_credits > -u.credits)),"
    " (SELECT count(*) FROM (SELECT r.reverses, p.lot_id, sum(p.credits) AS back FROM user_transactions AS r"
    "   JOIN lot_postings AS p ON p.transaction_id = r.id AND p.credits > 0"
    "   WHERE r.user_id = :u AND r.type = 'reversal' GROUP BY 1, 2) AS b"
    "   WHERE b.back > (SELECT coalesce(-sum(credits), 0) FROM lot_postings"
    "     WHERE transaction_id = b.reverses AND lot_id = b.lot_id))"
)

# Events that disagree with the ledger: rows without exactly one created event, rows whose latest event
# shows another status, rows updated twice; expirations against lot.expired events; and the user's
# sequence numbers (how many, how many distinct, the largest, and the balance row's count).
EVENTS_AGREE = text(
    "SELECT (SELECT count(*) FROM user_transactions AS t WHERE t.user_id = :u AND (SELECT count(*)"
    "   FROM ledger_events AS e WHERE e.user_id = :u AND e.type = 'transaction.created'"
    "   AND e.data->>'id' = t.id::text) <> 1),"
    " (SELECT count(*) FROM user_transactions AS t WHERE t.user_id = :u AND t.status::text IS DISTINCT FROM"
    "   (SELECT e.data->>'status' FROM ledger_events AS e WHERE e.user_id = :u AND e.type LIKE 'transaction.%'"
    "   AND e.data->>'id' = t.id::text ORDER BY e.sequence DESC LIMIT 1)),"
    " (SELECT count(*) FROM (SELECT data->>'id' FROM ledger_events WHERE user_id = :u"
    "   AND type = 'transaction.updated' GROUP BY 1 HAVING count(*) > 1) AS twice),"
    " (SELECT count(*) FROM user_transactions WHERE user_id = :u AND type = 'expiration')"
    "   - (SELECT count(*) FROM ledger_events WHERE user_id = :u AND type = 'lot.expired'),"
    " (SELECT count(*) FROM ledger_events WHERE user_id = :u),"
    " (SELECT count(DISTINCT sequence) FROM ledger_events WHERE user_id = :u),"
    " (SELECT coalesce(max(sequence), 0) FROM ledger_events WHERE user_id = :u),"
    " (SELECT coalesce(max(event_sequence), 0) FROM user_balances WHERE user_id = :u)"
)

# A user's postings in the order they were written, and how many balance.low events they have.
POSTINGS_IN_ORDER = text(
    "SELECT transaction_id, created_at, balance_after - held_after FROM lot_postings WHERE user_id = :u ORDER BY id"
)
# Postings whose totals are not the running sums of the user's postings before them in write order, or
# whose stamps go back in time (what the books at an instant and the statements read: migration 0011).
POSTINGS_OUT_OF_STEP = text(
    "SELECT count(*) FROM (SELECT balance_after, held_after, created_at,"
    " sum(credits) OVER w AS balance, sum(held) OVER w AS held, lag(created_at) OVER w AS previous"
    " FROM lot_postings WHERE user_id = :u WINDOW w AS (ORDER BY id)) AS p"
    " WHERE balance_after <> balance OR held_after <> held OR created_at < previous"
)
# The rollup against the ledger: per period of each grain (quarter hour, hour, UTC day) and pair (the
# total, and each model), the credits completed usage spent less what reversals gave back (against their
# usage's model); rows that differ.
ROLLUP_DISAGREES = text(
    "WITH spent AS (SELECT '' AS key, t.created_at, '' AS value, -t.credits AS credits FROM user_transactions AS t"
    "   WHERE t.user_id = :u AND ((t.type = 'usage' AND t.status = 'completed') OR t.type = 'reversal')"
    "   UNION ALL SELECT 'model', t.created_at, u.metadata->>'model', -t.credits FROM user_transactions AS t"
    "     JOIN user_transactions AS u ON u.id = coalesce(t.reverses, t.id) WHERE t.user_id = :u"
    "     AND ((t.type = 'usage' AND t.status = 'completed') OR t.type = 'reversal') AND u.metadata->>'model' IS NOT NULL),"
    " ledger AS (SELECT key, g.minutes AS grain, date_bin(g.width, created_at, timestamptz '2000-01-01') AS period,"
    "   value, sum(credits) AS credits FROM spent,"
    "   (VALUES (15, interval '15 minutes'), (60, interval '1 hour'), (360, interval '6 hours'),"
    "   (1440, interval '1 day')) AS g (minutes, width)"
    "   GROUP BY 1, 2, 3, 4),"
    " rolled AS (SELECT key, grain, period, value, credits FROM usage_rollup WHERE user_id = :u)"
    " SELECT count(*) FROM ledger FULL JOIN rolled USING (key, grain, period, value)"
    " WHERE ledger.credits IS DISTINCT FROM rolled.credits AND coalesce(ledger.credits, rolled.credits) <> 0"
)
LOW_BALANCE_EVENTS = text("SELECT count(*) FROM ledger_events WHERE user_id = :u AND type = 'balance.low'")


def crossings(postings, threshold):
    """How many writes took available credits from at or above ``threshold`` to below it.

    A write's postings share its transaction and time and come one after another; the last holds the
    user's totals after the write.
    """
    if threshold is None:
        return 0
    after_each_write = [available for (write, _time, available), following in zip(postings, postings[1:] + [None])
                        if following is None or (following[0], following[1]) != (write, _time)]
    before = [0] + after_each_write[:-1]
    return sum(1 for was, now in zip(before, after_each_write) if was >= threshold > now)


def make_machine(api, engine, app, granter):
    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")
        pending_purchases = Bundle("pending_purchases")
        credit_rows = Bundle("credit_rows")
        purchases = Bundle("purchases")
        usages = Bundle("usages")

        @initialize(threshold=st.none() | st.integers(0, 400))
        def open_account(self, threshold):
            self.user_id = api.register()
            self.threshold = threshold
            response = api.client.put(f"/api/users/{self.user_id}", json={"low_balance_threshold": threshold},
                                      headers=bearer(api.admin_token))
            assert response.json["low_balance_threshold"] == threshold
            self.expiry_recorded = True
            self.bought = []
            self.books = []  # (instant, balance, held) as recorded after each step

        def _created(self, response):
            assert response.status_code in (201, 409), response.json
            return response.json if response.status_code == 201 else None

        @rule(target=credit_rows, credits=st.integers(1, 300), expires=st.sampled_from([None, 60, 3600]),
              priority=st.sampled_from([None, 0, 50, 90]))
        def purchase(self, credits, expires, priority):
            fields = {"expires_in": expires} if expires else {}
            if priority is not None:
                fields["priority"] = priority
            created = self._created(api.purchase(self.user_id, credits=credits, amount="1.00", **fields))
            self.bought.append(created["id"])
            return created["id"]

        @rule(target=purchases)
        def pick_purchase(self):
            return multiple(*self.bought[-1:])

        @rule(purchase=purchases, credits=st.integers(1, 300), amount=st.sampled_from(["0", "0.40", "1.00"]))
        def refund(self, purchase, credits, amount):
            response = api.create(user_id=self.user_id, type="refund", refunds=purchase, credits=-credits,
                                  amount=amount, description="refund")
            assert response.status_code == 201 or response.json["code"] in (
                "refund_exceeds_remaining", "refund_exceeds_amount"), response.json

        @rule(usage=st.one_of(usages, holds), credits=st.integers(1, 150))
        def reverse(self, usage, credits):
            response = api.create(user_id=self.user_id, type="reversal", reverses=usage, credits=credits,
                                  description="reversal")
            assert response.status_code == 201 or response.json["code"] in (
                "reversal_exceeds_usage", "not_reversible", "unknown_transaction"), response.json

        @rule(credits=st.integers(-150, 150).filter(bool), expires=st.sampled_from([None, 60]))
        def adjust(self, credits, expires):
            fields = {"expires_in": expires} if expires and credits > 0 else {}
            response = api.create(token=granter, user_id=self.user_id, type="adjustment", credits=credits,
                                  description="support", **fields)
            assert response.status_code == 201 or response.json["code"] == "insufficient_credits", response.json

        @rule(target=credit_rows, credits=st.integers(1, 200), expires=st.sampled_from([None, 60, 3600]),
              category=st.sampled_from(["promotional", "paid"]))
        def grant(self, credits, expires, category):
            fields = {"expires_in": expires} if expires else {}
            response = api.create(token=granter, user_id=self.user_id, type="grant", credits=credits,
                                  description="bonus", category=category, **fields)
            return self._created(response)["id"]

        @rule(target=pending_purchases, credits=st.integers(1, 200))
        def start_checkout(self, credits):
            return self._created(api.purchase(self.user_id, credits=credits, amount="2.00", status="pending"))["id"]

        @rule(purchase=pending_purchases, outcome=st.sampled_from(["completed", "failed"]))
        def settle_checkout(self, purchase, outcome):
            assert api.settle(purchase, outcome).status_code in (200, 409)

        @rule(target=usages, credits=st.integers(1, 150), model=MODELS)
        def spend(self, credits, model):
            created = self._created(api.usage(self.user_id, credits=-credits, **model))
            return created["id"] if created else str(uuid.uuid4())

        def _batch(self, entries, status):
            """A batch of usage (one statement): each item answered as it would be alone after the ones
            before it, and an item sent twice (its key again) answered by the first."""
            available = api.balance(self.user_id)["available"]
            items, expected = [], []
            for credits, model, again in entries:
                if again and items:
                    items.append(items[-1])
                    expected.append(200 if expected[-1] in (200, 201) else 409)
                    continue
                items.append({"user_id": str(self.user_id), "type": "usage", "amount": "0", "credits": -credits,
                              "status": status, "description": "batched", "idempotency_key": str(uuid.uuid4()),
                              **model})
                expected.append(201 if credits <= available else 409)
                available -= credits if credits <= available else 0
            response = api.client.post("/api/transactions/batch", json={"items": items},
                                       headers=bearer(api.admin_token))
            results = response.json["results"]
            assert [result["status"] for result in results] == expected, results
            for result, before in zip(results[1:], results):
                if result["status"] == 200:
                    assert result["replayed"] and result["transaction"] == before["transaction"]
            return multiple(*[result["transaction"]["id"] for result in results if result["status"] == 201])

        @rule(target=usages, entries=BATCH_ENTRIES)
        def spend_batch(self, entries):
            return self._batch(entries, "completed")

        @rule(target=holds, entries=BATCH_ENTRIES)
        def hold_batch(self, entries):
            return self._batch(entries, "pending")

        @rule(target=holds, credits=st.integers(1, 150), model=MODELS)
        def hold(self, credits, model):
            created = self._created(api.usage(self.user_id, credits=-credits, status="pending", **model))
            return created["id"] if created else str(uuid.uuid4())

        @rule(hold=holds, outcome=st.sampled_from(["completed", "failed"]))
        def settle_hold(self, hold, outcome):
            assert api.settle(hold, outcome).status_code in (200, 404, 409)

        @rule(credit=credit_rows)
        def lot_lapses(self, credit):
            with engine.begin() as connection:
                # Expires now (the database's clock, which the ledger's postings are before).
                connection.execute(
                    text("UPDATE credit_lots SET expires_at = clock_timestamp() WHERE transaction_id = :id AND"
                         " (expires_at IS NULL OR expires_at > clock_timestamp())"),
                    {"id": credit},
                )
            self.expiry_recorded = False

        @rule(hold=holds)
        def hold_lapses(self, hold):
            with engine.begin() as connection:
                connection.execute(
                    text("UPDATE user_transactions SET hold_expires_at = clock_timestamp()"
                         " WHERE id = :id AND status = 'pending'"),
                    {"id": hold},
                )
            self.expiry_recorded = False

        @rule()
        def expiry_job(self):
            result = app.test_cli_runner().invoke(args=["transactions", "expire"])
            assert result.exit_code == 0, result.output
            self.expiry_recorded = True

        @invariant()
        def the_money_adds_up(self):
            if not hasattr(self, "user_id"):
                return
            with engine.connect() as connection:
                row = connection.execute(SUMS, {"u": self.user_id}).one()
                taken_late = connection.execute(TAKEN_AFTER_EXPIRY, {"u": self.user_id}).scalar()
                too_much = connection.execute(GIVEN_BACK_TOO_MUCH, {"u": self.user_id}).one()
                events = connection.execute(EVENTS_AGREE, {"u": self.user_id}).one()
                postings = connection.execute(POSTINGS_IN_ORDER, {"u": self.user_id}).all()
                lows = connection.scalar(LOW_BALANCE_EVENTS, {"u": self.user_id})
                out_of_step = connection.scalar(POSTINGS_OUT_OF_STEP, {"u": self.user_id})
                rollup_off = connection.scalar(ROLLUP_DISAGREES, {"u": self.user_id})
            balance, held, lots, lots_held, posted, posted_held, completed, broken, unexpired_remaining = row
            balance, held = balance or 0, held or 0
            assert broken == 0
            assert balance == lots == posted == completed
            assert held == lots_held == posted_held
            assert taken_late == 0
            assert tuple(too_much) == (0, 0, 0)
            unmatched, other_status, updated_twice, expirations_without_event, *numbers = events
            assert (unmatched, other_status, updated_twice, expirations_without_event) == (0, 0, 0, 0)
            count, distinct, largest, counted = numbers
            assert count == distinct == largest == counted
            assert lows == crossings(postings, self.threshold)
            assert (out_of_step, rollup_off) == (0, 0)
            self._the_books_are_the_postings(balance, held)
            read = api.client.get(f"/api/balance?user_id={self.user_id}", headers=bearer(api.admin_token)).json
            assert read["available"] == read["paid"] + read["promotional"] >= 0
            if self.expiry_recorded:
                assert (read["balance"], read["held"]) == (balance, held)
                assert read["available"] == unexpired_remaining

        def _the_books_are_the_postings(self, balance, held):
            """The books now are the balance row's, and a statement of this month adds up to them."""
            at = utcnow()
            self.books.append((at, balance, held))
            assert self._books_at(at) == (balance, held)
            month = api.client.get(f"/api/statements?user_id={self.user_id}&month={at:%Y-%m}",
                                   headers=bearer(api.admin_token)).json
            lines = sum(month[line] for line in STATEMENT_LINES)
            assert month["opening_balance"] + lines == month["closing_balance"] == balance
            assert month["closing_held"] == held

        def _books_at(self, at):
            read = api.client.get(f"/api/balance?user_id={self.user_id}&at={at.isoformat().replace('+00:00', 'Z')}",
                                  headers=bearer(api.admin_token)).json
            assert read["available"] == read["balance"] - read["held"]
            return read["balance"], read["held"]

        def teardown(self):
            # Every earlier instant still reads what was recorded then, however much came after.
            for at, balance, held in getattr(self, "books", []):
                assert self._books_at(at) == (balance, held)

    return LedgerMachine


def test_lots_keep_the_money_invariants_after_every_step(api, engine, app, service_token):
    granter = service_token("credits:grant", "credits:adjust", name="property-granter")
    machine = make_machine(api, engine, app, granter)
    machine.TestCase.settings = settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine.TestCase().runTest()
