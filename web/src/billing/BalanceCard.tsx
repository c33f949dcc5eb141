import type { ReactNode } from "react";

import type { Balance } from "@/api/client";

import styles from "./billing.module.css";
import { formatCredits } from "./format";
import { BalanceSkeleton } from "./Skeletons";

export interface BalanceCardProps {
  /** The balance the service vouched for in the current load; null while it is on its way. */
  balance: Balance | null;
  /**
   * Why the balance could not be loaded, in the same words as the history's error. It wins over
   * `balance`: a card that failed never shows numbers, stale or not.
   */
  error?: string | null;
}

/**
 * Available credits large, with the balance and the credits held by generations in progress beside
 * them; a skeleton while they are on their way; and when they could not be loaded, the same frame and
 * heading with the reason in place of the numbers, so the card keeps its place on the page.
 */
export function BalanceCard({ balance, error }: BalanceCardProps) {
  if (error != null) {
    return (
      <CardFrame>
        {/* Not a live region: the card fails only together with the history (or the session), whose
            panel is the alert and holds the one action (Retry, Sign in); announcing both would say it twice. */}
        <div className={styles.balanceError} data-testid="balance-error">
          <p className={styles.panelTitle}>Balance unavailable</p>
          <p className={styles.panelText} data-testid="balance-error-message">
            {error}
          </p>
        </div>
      </CardFrame>
    );
  }
  if (!balance) return <BalanceSkeleton />;
  return (
    <CardFrame>
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
    </CardFrame>
  );
}

function CardFrame({ children }: { children: ReactNode }) {
  return (
    <section className={styles.card} aria-labelledby="balance-heading" data-testid="balance-card">
      <h2 id="balance-heading" className={styles.cardLabel}>
        Available credits
      </h2>
      {children}
    </section>
  );
}
