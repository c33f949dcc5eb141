"""The benchmark's references are correct writes: pgbench's batch of spends (scenario M), run on the test
database, leaves the books a batch through the API would."""

from __future__ import annotations

import json

from sqlalchemy import text

from bench.run import pgbench_batch_script

from .test_batches import batch, item


def test_pgbench_batch_writes_what_a_batch_of_spends_writes(api, engine):
    users = [str(api.funded_user(50)) for _ in range(3)]
    drawn = [users[0], users[1], users[0], users[2], users[0]]  # a hot user among others, in item order
    shown = json.dumps(batch(api, [item(users[0], credits=-1)]).json["results"][0]["transaction"])
    script = pgbench_batch_script(drawn, "reference", shown)
    statement = script.split("\n", 1)[1].replace(":client_id", "1").replace(":k", "7")
    with engine.begin() as connection:
        connection.exec_driver_sql(statement)
    with engine.connect() as connection:
        for user, expected in zip(users, (49 - 3, 50 - 1, 50 - 1)):
            balance, in_lots, posted, completed, events, sequence, rolled = connection.execute(text(
                "SELECT b.balance, (SELECT sum(remaining) FROM credit_lots WHERE user_id = :u),"
                " (SELECT sum(credits) FROM lot_postings WHERE user_id = :u),"
                " (SELECT sum(credits) FROM user_transactions WHERE user_id = :u AND status = 'completed'),"
                " (SELECT array_agg(sequence ORDER BY sequence) FROM ledger_events WHERE user_id = :u),"
                " b.event_sequence,"
                " (SELECT -sum(credits) FROM user_transactions WHERE user_id = :u AND type = 'usage')"
                "   - (SELECT coalesce(sum(credits), 0) FROM usage_rollup WHERE user_id = :u AND key = '' AND grain = 15)"
                " FROM user_balances AS b WHERE b.user_id = :u"), {"u": user}).one()
            assert balance == in_lots == posted == completed == expected
            assert events == list(range(1, sequence + 1))
            assert rolled == 0
            last = connection.execute(text(
                "SELECT balance_after FROM lot_postings WHERE user_id = :u ORDER BY created_at DESC, id DESC LIMIT 1"),
                {"u": user}).scalar()
            assert last == balance
        keys = connection.scalar(text("SELECT count(*) FROM idempotency_keys WHERE key LIKE 'reference-pgbatch-1-7-%'"))
        assert keys == len(drawn)
