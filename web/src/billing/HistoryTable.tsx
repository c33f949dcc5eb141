import { Fragment, useCallback, useEffect, useRef, useState } from "react";

import type { Transaction, TransactionsApi } from "@/api/client";

import styles from "./billing.module.css";
import {
  formatAmount,
  formatDateTime,
  formatSignedCredits,
  formatUtc,
  STATUS_LABELS,
  TYPE_LABELS,
} from "./format";
import { TransactionDetails } from "./TransactionDetails";

const COLUMNS = 7;

// Explicit roles keep the table a table for screen readers on narrow screens,
// where CSS turns each row into a small grid (some browsers drop the implicit
// roles once `display` changes).
export function HistoryTable({
  rows,
  api,
  labelledBy,
  focusRowId,
  onFocused,
}: {
  rows: Transaction[];
  /** Where a row's details (its postings) are read from. */
  api: TransactionsApi;
  labelledBy: string;
  /** After "Load more": the first new row, which takes the focus. */
  focusRowId: string | null;
  onFocused: () => void;
}) {
  const body = useRef<HTMLTableSectionElement>(null);
  const [open, setOpen] = useState<ReadonlySet<string>>(() => new Set());
  const toggle = useCallback(
    (id: string) =>
      setOpen((now) => {
        const next = new Set(now);
        if (!next.delete(id)) next.add(id);
        return next;
      }),
    [],
  );

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
            <th role="columnheader" scope="col">
              <span className={styles.visuallyHidden}>Details</span>
            </th>
          </tr>
        </thead>
        <tbody role="rowgroup" ref={body}>
          {rows.map((transaction) => {
            const expanded = open.has(transaction.id);
            const detailsId = `details-${transaction.id}`;
            return (
              <Fragment key={transaction.id}>
                <tr
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
                    <Status transaction={transaction} />
                  </td>
                  <td role="cell" className={styles.detailsCell}>
                    <button
                      type="button"
                      className={styles.disclosure}
                      aria-expanded={expanded}
                      aria-controls={expanded ? detailsId : undefined}
                      onClick={() => toggle(transaction.id)}
                      data-testid="details-toggle"
                    >
                      Details <span className={styles.visuallyHidden}>of {transaction.description}</span>
                    </button>
                  </td>
                </tr>
                {expanded && (
                  <tr
                    role="row"
                    id={detailsId}
                    className={styles.detailsRow}
                    data-testid="details-row"
                    data-details-for={transaction.id}
                  >
                    <td role="cell" colSpan={COLUMNS}>
                      <TransactionDetails transaction={transaction} api={api} />
                    </td>
                  </tr>
                )}
              </Fragment>
            );
          })}
        </tbody>
      </table>
    </div>
  );
}

/**
 * The status pill; a pending usage says what it means for the customer's credits (reserved, not yet
 * charged) and when the reservation lapses, in the viewer's locale and time zone.
 */
function Status({ transaction }: { transaction: Transaction }) {
  if (transaction.type !== "usage" || transaction.status !== "pending") {
    return (
      <span className={`${styles.pill} ${styles[`pill_${transaction.status}`] ?? ""}`}>
        {STATUS_LABELS[transaction.status]}
      </span>
    );
  }
  const lapses = transaction.hold_expires_at;
  // "Reserved" in the pill, the rest beside it: one reading, "Reserved, not yet charged, lapses …".
  return (
    <>
      <span className={`${styles.pill} ${styles.pill_pending}`}>Reserved</span>
      {/* The comma is for a screen reader, which reads on; the eye sees a line of its own. */}
      <span className={styles.visuallyHidden}>, </span>
      <span className={styles.holdNote} data-testid="hold-note">
        not yet charged
        {lapses && (
          <>
            ,{" "}
            <span className={styles.holdExpiry} data-testid="hold-expiry">
              {Date.parse(lapses) <= Date.now() ? "lapsed" : "lapses"}{" "}
              <time dateTime={lapses} title={formatUtc(lapses)}>
                {formatDateTime(lapses)}
              </time>
            </span>
          </>
        )}
      </span>
    </>
  );
}
