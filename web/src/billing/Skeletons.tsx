import styles from "./billing.module.css";

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

export function HistorySkeleton() {
  return (
    <div className={styles.skeletonTable} data-testid="history-loading" aria-busy="true">
      <p role="status" className={styles.visuallyHidden}>
        Loading your transactions…
      </p>
      {Array.from({ length: 6 }, (_, index) => (
        <span key={index} className={`${styles.skeleton} ${styles.skeletonRow}`} aria-hidden="true" />
      ))}
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
