import type { Balance } from "@/api/client";

import styles from "./billing.module.css";
import { formatCredits } from "./format";
import { BalanceSkeleton } from "./Skeletons";

/** Available credits large, with the balance and the credits held by generations in progress beside them. */
export function BalanceCard({ balance }: { balance: Balance | null }) {
  if (!balance) return <BalanceSkeleton />;
  return (
    <section className={styles.card} aria-labelledby="balance-heading" data-testid="balance-card">
      <h2 id="balance-heading" className={styles.cardLabel}>
        Available credits
      </h2>
      <p className={styles.available} data-testid="balance-available">
        {formatCredits(balance.available)}
      </p>
      <dl className={styles.totals}>
        <div>
          <dt>Balance</dt>
          <dd data-testid="balance-total">{formatCredits(balance.balance)}</dd>
        </div>
        <div>
          <dt>Held</dt>
          <dd data-testid="balance-held">{formatCredits(balance.held)}</dd>
          <dd className={styles.totalsHint}>reserved by generations in progress</dd>
        </div>
      </dl>
    </section>
  );
}
