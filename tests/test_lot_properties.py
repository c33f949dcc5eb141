"""Random sequences of ledger operations on the real database, with the clock moved, checking the
money invariants after every step (Hypothesis stateful testing).

Operations: purchases (completed, or pending and then settled), grants with or without expiry,
spends, holds and their settlement, lots lapsing and holds lapsing (their expiry moved into the
past), and the expiry job. After each step:

- no lot below zero, and no lot holding more than it was granted;
- the balance row = the sum of the lots = the sum of the postings = the sum of completed credits,
  and the held row = the lots' held = the postings' held;
- what the API reads as available = its paid + promotional credits; once the job has run,
  the balance it reads is the row's, and available is the unexpired lots' remaining;
- no credit of a lot was taken (spent or held) at or after the moment the lot expired.
"""

from __future__ import annotations

import os
import uuid

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import Bundle, RuleBasedStateMachine, initialize, invariant, rule
from sqlalchemy import text

from .helpers import bearer

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


def make_machine(api, engine, app, granter):
    class LedgerMachine(RuleBasedStateMachine):
        holds = Bundle("holds")
        pending_purchases = Bundle("pending_purchases")
        credit_rows = Bundle("credit_rows")

        @initialize()
        def open_account(self):
            self.user_id = api.register()
            self.expiry_recorded = True

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
            return created["id"]

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

        @rule(credits=st.integers(1, 150))
        def spend(self, credits):
            self._created(api.usage(self.user_id, credits=-credits))

        @rule(target=holds, credits=st.integers(1, 150))
        def hold(self, credits):
            created = self._created(api.usage(self.user_id, credits=-credits, status="pending"))
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
            balance, held, lots, lots_held, posted, posted_held, completed, broken, unexpired_remaining = row
            balance, held = balance or 0, held or 0
            assert broken == 0
            assert balance == lots == posted == completed
            assert held == lots_held == posted_held
            assert taken_late == 0
            read = api.client.get(f"/api/balance?user_id={self.user_id}", headers=bearer(api.admin_token)).json
            assert read["available"] == read["paid"] + read["promotional"] >= 0
            if self.expiry_recorded:
                assert (read["balance"], read["held"]) == (balance, held)
                assert read["available"] == unexpired_remaining

    return LedgerMachine


def test_lots_keep_the_money_invariants_after_every_step(api, engine, app, service_token):
    granter = service_token("credits:grant", name="property-granter")
    machine = make_machine(api, engine, app, granter)
    machine.TestCase.settings = settings(
        max_examples=EXAMPLES, stateful_step_count=STEPS, deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
    machine.TestCase().runTest()
