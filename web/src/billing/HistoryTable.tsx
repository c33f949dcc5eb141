import { useEffect, useRef } from "react";

import type { Transaction } from "@/api/client";

import styles from "./billing.module.css";
import {
  formatAmount,
  formatDateTime,
  formatSignedCredits,
  formatUtc,
  STATUS_LABELS,
  TYPE_LABELS,
} from "./format";

// Explicit roles keep the table a table for screen readers on narrow screens,
// where CSS turns each row into a small grid (some browsers drop the implicit
// roles once `display` changes).
export function HistoryTable({
  rows,
  labelledBy,
  focusRowId,
  onFocused,
}: {
  rows: Transaction[];
  labelledBy: string;
  /** After "Load more": the first new row, which takes the focus. */
  focusRowId: string | null;
  onFocused: () => void;
}) {
  const body = useRef<HTMLTableSectionElement>(null);

  useEffect(() => {
    if (!focusRowId) return;
    const rows = Array.from(body.current?.rows ?? []);
    rows.find((row) => row.dataset.id === focusRowId)?.focus();
    onFocused();
  }, [focusRowId, onFocused]);

  return (
    <div className={styles.tableWrap}>
      <table className={styles.table} role="table" aria-labelledby={labelledBy}>
        <thead role="rowgroup">
          <tr role="row">
            <th role="columnheader" scope="col">Date</th>
            <th role="columnheader" scope="col">Type</th>
            <th role="columnheader" scope="col">Description</th>
            <th role="columnheader" scope="col" className={styles.numeric}>
              Credits
            </th>
            <th role="columnheader" scope="col" className={styles.numeric}>
              Amount
            </th>
            <th role="columnheader" scope="col">Status</th>
          </tr>
        </thead>
        <tbody role="rowgroup" ref={body}>
          {rows.map((transaction) => (
            <tr
              key={transaction.id}
              role="row"
              className={`${styles.row} ${styles[`status_${transaction.status}`] ?? ""}`}
              data-testid="transaction-row"
              data-id={transaction.id}
              tabIndex={-1}
            >
              <td role="cell" className={styles.dateCell}>
                <time dateTime={transaction.created_at} title={formatUtc(transaction.created_at)}>
                  {formatDateTime(transaction.created_at)}
                </time>
              </td>
              <td role="cell" className={styles.typeCell}>
                <span className={`${styles.badge} ${styles[`type_${transaction.type}`] ?? ""}`}>
                  {TYPE_LABELS[transaction.type]}
                </span>
              </td>
              <td role="cell" className={styles.descriptionCell}>
                {transaction.description}
              </td>
              {/* Sign and colour follow `credits`, not the type: a purchase, grant or reversal adds
                  (+, green), a usage, refund or expiration takes away (−, red), and an adjustment may do
                  either. The sign says it without the colour. */}
              <td
                role="cell"
                className={`${styles.numeric} ${styles.creditsCell} ${
                  transaction.credits > 0 ? styles.creditsIn : styles.creditsOut
                }`}
                data-testid="credits"
              >
                {formatSignedCredits(transaction.credits)}
              </td>
              <td role="cell" className={`${styles.numeric} ${styles.amountCell}`} data-testid="amount">
                {formatAmount(transaction.amount, transaction.type)}
              </td>
              <td role="cell" className={styles.statusCell}>
                <span className={`${styles.pill} ${styles[`pill_${transaction.status}`] ?? ""}`}>
                  {STATUS_LABELS[transaction.status]}
                </span>
              </td>
            </tr>
          ))}
        </tbody>
      </table>
    </div>
  );
}
