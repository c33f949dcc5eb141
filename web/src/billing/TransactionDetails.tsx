"use client";

/**
 * What a history row opens to: the caller's reference and metadata (on every row already) and the
 * postings, which lots the entry changed, read from `GET /api/transactions/{id}` once it is opened.
 */
import { useQuery } from "@tanstack/react-query";

import type { Transaction, TransactionsApi } from "@/api/client";

import styles from "./billing.module.css";
import { failureMessage } from "./failures";
import { formatDateTime, formatSignedCredits, formatUtc } from "./format";
import { billingKeys, failureOf, unwrap } from "./queries";

export function TransactionDetails({ transaction, api }: { transaction: Transaction; api: TransactionsApi }) {
  const detail = useQuery({
    queryKey: billingKeys.transaction(transaction.id),
    queryFn: ({ signal }) => api.getTransaction(transaction.id, signal).then(unwrap),
  });
  const metadata = Object.entries(transaction.metadata ?? {});

  return (
    <div className={styles.details} data-testid="transaction-details">
      <div className={styles.detailsAbout}>
        <dl className={styles.facts}>
          <div>
            <dt>Reference</dt>
            <dd data-testid="details-reference">{transaction.reference ?? "None"}</dd>
          </div>
          <div>
            <dt>Transaction ID</dt>
            <dd>
              <code>{transaction.id}</code>
            </dd>
          </div>
          {transaction.refunds && (
            <div>
              <dt>Refund of</dt>
              <dd>
                <code>{transaction.refunds}</code>
              </dd>
            </div>
          )}
          {transaction.reverses && (
            <div>
              <dt>Returns the credits of</dt>
              <dd>
                <code>{transaction.reverses}</code>
              </dd>
            </div>
          )}
        </dl>

        <div className={styles.detailsBlock}>
          <h3 className={styles.detailsTitle}>Metadata</h3>
          {metadata.length === 0 ? (
            <p className={styles.detailsQuiet}>None</p>
          ) : (
            <dl className={styles.metadata} data-testid="details-metadata">
              {metadata.map(([key, value]) => (
                <div key={key}>
                  <dt>{key}</dt>
                  <dd>{value}</dd>
                </div>
              ))}
            </dl>
          )}
        </div>
      </div>

      <div className={styles.detailsBlock}>
        <h3 className={styles.detailsTitle}>Postings</h3>
        {detail.isPending && (
          <p className={styles.detailsQuiet} role="status">
            Loading postings…
          </p>
        )}
        {detail.isError && (
          <p className={styles.inlineError} role="alert" data-testid="details-error">
            Couldn’t load the postings: {failureMessage(failureOf(detail.error))}{" "}
            <button type="button" className={styles.linkButton} onClick={() => void detail.refetch()}>
              Retry
            </button>
          </p>
        )}
        {detail.data && detail.data.postings.length === 0 && (
          <p className={styles.detailsQuiet} data-testid="details-no-postings">
            None: this entry changed no credits.
          </p>
        )}
        {detail.data && detail.data.postings.length > 0 && (
          <table className={styles.dataTable} data-testid="details-postings">
            <thead>
              <tr>
                <th scope="col">Lot</th>
                <th scope="col" className={styles.numeric}>
                  Credits
                </th>
                <th scope="col" className={styles.numeric}>
                  Held
                </th>
                <th scope="col">Booked</th>
              </tr>
            </thead>
            <tbody>
              {detail.data.postings.map((posting, index) => (
                <tr key={`${posting.lot_id}-${index}`} data-testid="posting">
                  <td>
                    <code>{posting.lot_id}</code>
                  </td>
                  <td className={styles.numeric}>{formatSignedCredits(posting.credits)}</td>
                  <td className={styles.numeric}>{formatSignedCredits(posting.held)}</td>
                  <td>
                    <time dateTime={posting.created_at} title={formatUtc(posting.created_at)}>
                      {formatDateTime(posting.created_at)}
                    </time>
                  </td>
                </tr>
              ))}
            </tbody>
          </table>
        )}
      </div>
    </div>
  );
}
