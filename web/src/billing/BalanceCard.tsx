import type { ReactNode } from "react";

import type { Balance } from "@/api/client";

import styles from "./billing.module.css";
import { buyCreditsUrl } from "./buy-credits";
import { formatCredits, formatDateTime, formatExpiringCredits, formatUtc } from "./format";
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
 *
 * Under the number, how much of it is paid and how much promotional, but only while some credits are
 * promotional: for a customer who only ever bought credits the split would repeat the number beside
 * "0 promotional", a word that only raises questions. And when some credits will expire, the soonest
 * expiry ("100 credits expire on Jul 12, 2025, 9:30 AM", in the viewer's time zone, the exact UTC
 * moment on hover as in the history), so that nobody loses credits by surprise.
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
      <div className={styles.availableBlock}>
        <p className={styles.available} data-testid="balance-available">
          {formatCredits(balance.available)}
        </p>
        {balance.promotional > 0 && (
          <p className={styles.split} data-testid="balance-split">
            <span className={styles.splitValue} data-testid="balance-paid">{formatCredits(balance.paid)}</span> paid
            {/* The dot is for the eye; a screen reader hears a pause (the hidden comma) instead. */}
            <span aria-hidden="true"> · </span>
            <span className={styles.visuallyHidden}>, </span>
            <span className={styles.splitValue} data-testid="balance-promotional">{formatCredits(balance.promotional)}</span> promotional
          </p>
        )}
      </div>
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
      {balance.next_expiry && (
        <p className={styles.expiry} data-testid="balance-next-expiry">
          {formatExpiringCredits(balance.next_expiry.credits)} on{" "}
          <time dateTime={balance.next_expiry.expires_at} title={formatUtc(balance.next_expiry.expires_at)}>
            {formatDateTime(balance.next_expiry.expires_at)}
          </time>
        </p>
      )}
      <BuyCredits />
    </CardFrame>
  );
}

/** The way to more credits, beside the number it raises; absent when the product has no checkout URL. */
function BuyCredits() {
  const url = buyCreditsUrl();
  if (!url) return null;
  return (
    <a className={`${styles.button} ${styles.buyCredits}`} href={url} data-testid="buy-credits">
      Buy credits
    </a>
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
