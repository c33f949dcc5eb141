"use client";

/**
 * One month of the user's credits, from `GET /api/statements`: the opening balance, each kind of entry
 * that changed it (only the ones that did), and the closing balance, "so far" for the month under way.
 * The months offered are the last twelve in the viewer's time zone, the current one first.
 */
import { useQuery } from "@tanstack/react-query";
import { useId, useMemo, useState } from "react";

import type { Statement, TransactionsApi } from "@/api/client";

import styles from "./billing.module.css";
import { formatAmount, formatCredits, formatMonth, formatSignedCredits, recentMonths } from "./format";
import { billingKeys, unwrap, viewerTimeZone } from "./queries";
import { LoadingPanel, SectionFailure, SkeletonLines } from "./Skeletons";

type StatementLine = "purchases" | "grants" | "usage" | "refunds" | "reversals" | "adjustments" | "expirations" | "carried_in";

/** The lines in the order a statement reads, in the customer's words (as the history's badges). */
export const STATEMENT_LINES: Record<StatementLine, string> = {
  purchases: "Purchases",
  grants: "Free credits",
  usage: "Usage",
  refunds: "Refunds",
  reversals: "Credits returned",
  adjustments: "Adjustments",
  expirations: "Expired credits",
  carried_in: "Carried over",
};

export function StatementSection({ api, now }: { api: TransactionsApi; now?: Date }) {
  const timeZone = viewerTimeZone();
  const [today] = useState(() => now ?? new Date());
  const months = useMemo(() => recentMonths(today, timeZone), [today, timeZone]);
  const [month, setMonth] = useState(months[0]!);
  const headingId = useId();
  const statement = useQuery({
    queryKey: billingKeys.statement(month, timeZone),
    queryFn: ({ signal }) => api.getStatement({ month, tz: timeZone }, signal).then(unwrap),
  });

  return (
    <section className={styles.statement} aria-labelledby={headingId} data-testid="statement">
      <div className={styles.sectionHeader}>
        <h2 id={headingId} className={styles.sectionTitle}>
          Statement
        </h2>
        <label className={styles.filter}>
          <span>Month</span>
          <select value={month} onChange={(event) => setMonth(event.target.value)}>
            {months.map((value) => (
              <option key={value} value={value}>
                {formatMonth(value)}
              </option>
            ))}
          </select>
        </label>
      </div>
      {statement.isPending && (
        <LoadingPanel className={styles.statementSkeleton} testId="statement-loading" label="Loading your statement…">
          <SkeletonLines count={4} shape={styles.skeletonLine} />
        </LoadingPanel>
      )}
      {statement.isError && (
        <SectionFailure
          testId="statement-error"
          what="the statement"
          error={statement.error}
          onRetry={() => void statement.refetch()}
        />
      )}
      {statement.data && <StatementTable statement={statement.data} />}
    </section>
  );
}

function StatementTable({ statement }: { statement: Statement }) {
  const lines = (Object.keys(STATEMENT_LINES) as StatementLine[]).filter((line) => statement[line] !== 0);
  const paid = statement.amount_paid !== "0.00";
  const refunded = statement.amount_refunded !== "0.00";
  return (
    <>
      <table className={styles.statementTable} data-testid="statement-table">
        <caption className={styles.visuallyHidden}>
          Credits in {formatMonth(statement.month)}
          {statement.final ? "" : ", so far"}
        </caption>
        <tbody>
          <tr data-testid="statement-opening">
            <th scope="row">Opening balance</th>
            <td className={styles.numeric}>{formatCredits(statement.opening_balance)}</td>
          </tr>
          {lines.map((line) => (
            <tr key={line} data-testid="statement-line" data-line={line}>
              <th scope="row">{STATEMENT_LINES[line]}</th>
              <td className={`${styles.numeric} ${statement[line] > 0 ? styles.creditsIn : styles.creditsOut}`}>
                {formatSignedCredits(statement[line])}
              </td>
            </tr>
          ))}
          {lines.length === 0 && (
            <tr>
              <td colSpan={2} className={styles.statementQuiet} data-testid="statement-quiet">
                No credits came in or went out this month.
              </td>
            </tr>
          )}
        </tbody>
        <tfoot>
          <tr data-testid="statement-closing">
            <th scope="row">{statement.final ? "Closing balance" : "Closing balance so far"}</th>
            <td className={styles.numeric}>{formatCredits(statement.closing_balance)}</td>
          </tr>
          {statement.closing_held > 0 && (
            <tr className={styles.statementNote}>
              <th scope="row">of which held</th>
              <td className={styles.numeric}>{formatCredits(statement.closing_held)}</td>
            </tr>
          )}
        </tfoot>
      </table>
      {(paid || refunded) && (
        <p className={styles.statementMoney} data-testid="statement-money">
          {paid && <>Paid {formatAmount(statement.amount_paid, "purchase")}</>}
          {paid && refunded && <span aria-hidden="true"> · </span>}
          {paid && refunded && <span className={styles.visuallyHidden}>, </span>}
          {refunded && <>Refunded {formatAmount(statement.amount_refunded, "refund")}</>}
        </p>
      )}
      {!statement.final && (
        <p className={styles.statementHint}>The month is not over yet: the closing balance is the balance now.</p>
      )}
    </>
  );
}
