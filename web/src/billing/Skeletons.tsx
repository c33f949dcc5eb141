import type { ReactNode } from "react";

import styles from "./billing.module.css";
import { failureMessage } from "./failures";
import { failureOf } from "./queries";

/** Grey shapes where the balance will be, while the first answer is on its way. */
export function BalanceSkeleton() {
  return (
    <div className={`${styles.card} ${styles.skeletonCard}`} aria-hidden="true" data-testid="balance-loading">
      <span className={`${styles.skeleton} ${styles.skeletonLabel}`} />
      <span className={`${styles.skeleton} ${styles.skeletonNumber}`} />
      <span className={`${styles.skeleton} ${styles.skeletonLine}`} />
    </div>
  );
}

/** A part of the page whose first answer is on its way: grey shapes, and a status a screen reader reads. */
export function LoadingPanel({
  className,
  testId,
  label,
  children,
}: {
  className: string | undefined;
  testId: string;
  label: string;
  children: ReactNode;
}) {
  return (
    <div className={className} data-testid={testId} aria-busy="true">
      <p role="status" className={styles.visuallyHidden}>
        {label}
      </p>
      {children}
    </div>
  );
}

/** Grey shapes, `count` of them, of one kind (rows of the history, lines of the statement). */
export function SkeletonLines({ count, shape }: { count: number; shape: string | undefined }) {
  return (
    <>
      {Array.from({ length: count }, (_, index) => (
        <span key={index} className={`${styles.skeleton} ${shape}`} aria-hidden="true" />
      ))}
    </>
  );
}

export function HistorySkeleton() {
  return (
    <LoadingPanel className={styles.skeletonTable} testId="history-loading" label="Loading your transactions…">
      <SkeletonLines count={6} shape={styles.skeletonRow} />
    </LoadingPanel>
  );
}

/** A part of the page whose read failed: what failed and why, and Retry. */
export function SectionFailure({ testId, what, error, onRetry }: {
  testId: string;
  what: string;
  error: unknown;
  onRetry: () => void;
}) {
  return (
    <div className={styles.inlinePanel} role="alert" data-testid={testId}>
      <p className={styles.inlineError}>
        Couldn’t load {what}: {failureMessage(failureOf(error))}
      </p>
      <button type="button" className={styles.linkButton} onClick={onRetry}>
        Retry
      </button>
    </div>
  );
}

/** What the page shows before its script runs (the server-rendered fallback). */
export function BillingSkeleton() {
  return (
    <div className={styles.billing}>
      <BalanceSkeleton />
      <div className={styles.insights} aria-hidden="true">
        <div className={styles.usage}>
          <span className={`${styles.skeleton} ${styles.skeletonLabel}`} />
          <span className={`${styles.skeleton} ${styles.skeletonChart}`} />
        </div>
        <div className={styles.statement}>
          <span className={`${styles.skeleton} ${styles.skeletonLabel}`} />
          {Array.from({ length: 4 }, (_, index) => (
            <span key={index} className={`${styles.skeleton} ${styles.skeletonLine}`} />
          ))}
        </div>
      </div>
      <section className={styles.history} aria-label="History">
        <HistorySkeleton />
      </section>
    </div>
  );
}
