"use client";

/**
 * The billing page's content: the balance card, the usage chart, the month's statement and the
 * history, with every state a user can meet (loading, empty, error, signed out, session expired,
 * "Load more" and its failures). It gets the filters from its parent (the URL, on the page) and the
 * service through `api`, which tests replace. Every read is a TanStack Query query (see queries.ts):
 * cached by its key, retried when it may pass, refetched when the tab comes back, and cancelled
 * through its signal when nobody waits for it any more.
 */
import { useInfiniteQuery, useQuery } from "@tanstack/react-query";
import { useCallback, useEffect, useId, useMemo, useRef, useState } from "react";

import {
  createTransactionsApi,
  type ApiFailure,
  type HistoryQuery,
  type Transaction,
  type TransactionPage,
  type TransactionsApi,
} from "@/api/client";

import { BalanceCard } from "./BalanceCard";
import styles from "./billing.module.css";
import { buyCreditsUrl } from "./buy-credits";
import { DownloadCsv } from "./DownloadCsv";
import { failureMessage, mostSevere, signInHref } from "./failures";
import { FilterBar } from "./FilterBar";
import { hasFilters, type HistoryFilters } from "./filters";
import { HistoryTable } from "./HistoryTable";
import { billingKeys, failureOf, unwrap } from "./queries";
import { HistorySkeleton } from "./Skeletons";
import { StatementSection } from "./StatementSection";
import { UsageSection } from "./UsageSection";

export interface BillingProps {
  filters: HistoryFilters;
  onFiltersChange: (filters: HistoryFilters) => void;
  /** The transactions service; the page uses the one configured from the environment. */
  api?: TransactionsApi;
  pageSize?: number;
}

let configuredApi: TransactionsApi | undefined;

function defaultApi(): TransactionsApi {
  configuredApi ??= createTransactionsApi();
  return configuredApi;
}

/**
 * The failure a query stands for on the page, or null. A query that still shows data from before
 * keeps it through a failed background refetch (the tab came back while the service was down), except
 * on a 401: a user whose session has gone sees no numbers.
 */
function pageFailure(query: { isError: boolean; error: unknown; data: unknown }): ApiFailure | null {
  if (!query.isError) return null;
  const failure = failureOf(query.error);
  return query.data === undefined || failure.kind === "unauthorized" ? failure : null;
}

/** The rows of the pages fetched so far, each once: a row inserted between two page fetches must not appear twice. */
function rowsOf(pages: TransactionPage[] | undefined): Transaction[] {
  if (!pages) return [];
  const seen = new Set<string>();
  const rows: Transaction[] = [];
  for (const page of pages) {
    for (const row of page.data) {
      if (seen.has(row.id)) continue;
      seen.add(row.id);
      rows.push(row);
    }
  }
  return rows;
}

export function Billing({ filters, onFiltersChange, api = defaultApi(), pageSize = 20 }: BillingProps) {
  const { type, status } = filters;
  const [announcement, setAnnouncement] = useState("");
  const [focusRowId, setFocusRowId] = useState<string | null>(null);
  const historyHeadingId = useId();

  const balance = useQuery({
    queryKey: billingKeys.balance(),
    queryFn: ({ signal }) => api.getBalance(signal).then(unwrap),
  });
  const historyKey = billingKeys.history(filters, pageSize);
  const history = useInfiniteQuery({
    queryKey: historyKey,
    queryFn: ({ pageParam, signal }) => {
      const query: HistoryQuery = {
        limit: pageSize,
        ...(pageParam && { cursor: pageParam }),
        ...(type && { type }),
        ...(status && { status }),
      };
      return api.listTransactions(query, signal).then(unwrap);
    },
    initialPageParam: null as string | null,
    getNextPageParam: (last) => (last.has_more ? last.next_cursor : null),
  });

  // Which history the page is showing now, so that a "Load more" that answers after the filters
  // changed announces nothing and moves no focus.
  const shownKey = JSON.stringify(historyKey);
  const currentKey = useRef(shownKey);
  useEffect(() => {
    currentKey.current = shownKey;
    setAnnouncement("");
  }, [shownKey]);

  const rows = useMemo(() => rowsOf(history.data?.pages), [history.data]);

  // The balance and the first page are one load, and fail as one (Retry repeats both): the card says
  // "Balance unavailable" with the same reason as the history's error, whichever read failed, and never
  // numbers it no longer vouches for.
  const failure = mostSevere(pageFailure(balance), history.isFetchNextPageError ? null : pageFailure(history));
  const phase: "loading" | "failed" | "ready" =
    failure !== null ? "failed" : balance.data === undefined || history.data === undefined ? "loading" : "ready";

  const { refetch: refetchBalance } = balance;
  const { refetch: refetchHistory, fetchNextPage, hasNextPage, isFetchingNextPage } = history;
  const retry = useCallback(() => {
    void refetchBalance();
    void refetchHistory();
  }, [refetchBalance, refetchHistory]);
  const focusDone = useCallback(() => setFocusRowId(null), []);

  const loadMore = useCallback(async () => {
    if (!hasNextPage || isFetchingNextPage) return;
    const asked = currentKey.current;
    const shown = new Set(rows.map((row) => row.id));
    const result = await fetchNextPage({ cancelRefetch: false });
    if (asked !== currentKey.current || result.isFetchNextPageError || !result.data) return;
    const added = rowsOf(result.data.pages).filter((row) => !shown.has(row.id));
    const last = result.data.pages.at(-1);
    setFocusRowId(added[0]?.id ?? null);
    setAnnouncement(
      `${added.length} more ${added.length === 1 ? "transaction" : "transactions"} loaded` +
        (last?.has_more ? "." : ". That is all of them."),
    );
  }, [rows, fetchNextPage, hasNextPage, isFetchingNextPage]);

  const balanceError = failure ? failureMessage(failure) : null;

  // On a 401 or without a token the card says so, still with no numbers (they are shown only to a
  // signed-in user), and the session panel takes the place of everything else with the one way out,
  // signing in: no Retry, which could not help, and no filters, chart or statement.
  if (failure && (failure.kind === "unauthorized" || failure.kind === "signed-out")) {
    return (
      <div className={styles.billing}>
        <BalanceCard balance={null} error={balanceError} />
        <SessionPanel expired={failure.kind === "unauthorized"} />
      </div>
    );
  }

  const more: More = history.isFetchingNextPage
    ? { state: "loading" }
    : history.isFetchNextPageError
      ? { state: "failed", failure: failureOf(history.error) }
      : { state: "idle" };

  return (
    <div className={styles.billing}>
      <BalanceCard balance={phase === "ready" ? (balance.data ?? null) : null} error={balanceError} />
      {/* The chart and the statement ask for their own numbers, side by side with the first load; when
          that load fails the page's one error says why, rather than three. */}
      {phase !== "failed" && (
        <div className={styles.insights}>
          <UsageSection api={api} />
          <StatementSection api={api} />
        </div>
      )}
      <section className={styles.history} aria-labelledby={historyHeadingId}>
        <div className={styles.historyHeader}>
          <h2 id={historyHeadingId} className={styles.sectionTitle}>
            History
          </h2>
          <div className={styles.historyTools}>
            <FilterBar filters={filters} onChange={onFiltersChange} />
            {phase === "ready" && balance.data && rows.length > 0 && (
              <DownloadCsv api={api} filters={filters} userId={balance.data.user_id} />
            )}
          </div>
        </div>
        {phase === "loading" && <HistorySkeleton />}
        {phase === "failed" && failure && <ErrorPanel failure={failure} onRetry={retry} />}
        {phase === "ready" && rows.length === 0 && (
          <EmptyState filtered={hasFilters(filters)} onClearFilters={() => onFiltersChange({})} />
        )}
        {phase === "ready" && rows.length > 0 && (
          <>
            <HistoryTable
              rows={rows}
              api={api}
              labelledBy={historyHeadingId}
              focusRowId={focusRowId}
              onFocused={focusDone}
            />
            <LoadMore more={more} hasMore={hasNextPage} onLoadMore={loadMore} />
          </>
        )}
        <p className={styles.visuallyHidden} aria-live="polite">
          {announcement}
        </p>
      </section>
    </div>
  );
}

type More = { state: "idle" } | { state: "loading" } | { state: "failed"; failure: ApiFailure };

function SessionPanel({ expired }: { expired: boolean }) {
  return (
    <div className={styles.panel} role="alert" data-testid={expired ? "session-expired" : "signed-out"}>
      <h2 className={styles.panelTitle}>
        {expired ? "Your session has expired — sign in again" : "Sign in to see your billing"}
      </h2>
      <p className={styles.panelText}>
        {expired
          ? "For your security, your credits and history are shown only while you are signed in."
          : "Your credits and transaction history appear here once you are signed in."}
      </p>
      <a className={styles.button} href={signInHref()}>
        {expired ? "Sign in again" : "Sign in"}
      </a>
    </div>
  );
}

function ErrorPanel({ failure, onRetry }: { failure: ApiFailure; onRetry: () => void }) {
  return (
    <div className={styles.panel} role="alert" data-testid="billing-error">
      <h3 className={styles.panelTitle}>We couldn’t load your billing history</h3>
      <p className={styles.panelText} data-testid="billing-error-message">
        {failureMessage(failure)}
      </p>
      <p className={styles.panelHint}>Nothing has changed in your account. Try again in a moment.</p>
      <button type="button" className={styles.button} onClick={onRetry}>
        Retry
      </button>
    </div>
  );
}

function EmptyState({ filtered, onClearFilters }: { filtered: boolean; onClearFilters: () => void }) {
  if (filtered) {
    return (
      <div className={styles.panel} data-testid="history-empty">
        <h3 className={styles.panelTitle}>No transactions match these filters</h3>
        <button type="button" className={styles.buttonSecondary} onClick={onClearFilters}>
          Clear filters
        </button>
      </div>
    );
  }
  const buyUrl = buyCreditsUrl();
  return (
    <div className={styles.panel} data-testid="history-empty">
      <h3 className={styles.panelTitle}>No transactions yet</h3>
      <p className={styles.panelText}>
        Buy credits to get started: your purchases, and the credits each generation uses, will be listed here.
      </p>
      {buyUrl && (
        <a className={styles.button} href={buyUrl} data-testid="empty-buy-credits">
          Buy credits
        </a>
      )}
    </div>
  );
}

function LoadMore({ more, hasMore, onLoadMore }: { more: More; hasMore: boolean; onLoadMore: () => void }) {
  const expired = more.state === "failed" && more.failure.kind === "unauthorized";
  return (
    <div className={styles.loadMore}>
      {more.state === "failed" && (
        <p className={styles.inlineError} role="alert" data-testid="load-more-error">
          {expired ? (
            <>
              Your session has expired — <a href={signInHref()}>sign in again</a>
            </>
          ) : (
            <>Couldn’t load more transactions: {failureMessage(more.failure)}</>
          )}
        </p>
      )}
      {hasMore && !expired && (
        <button
          type="button"
          className={styles.buttonSecondary}
          onClick={onLoadMore}
          disabled={more.state === "loading"}
        >
          {more.state === "loading" ? "Loading…" : more.state === "failed" ? "Try again" : "Load more"}
        </button>
      )}
    </div>
  );
}
