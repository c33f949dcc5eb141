"use client";

/**
 * The billing page's content: the balance card and the history, with every
 * state a user can meet (loading, empty, error, signed out, session expired,
 * "Load more" and its failures). It gets the filters from its parent (the URL,
 * on the page) and the service through `api`, which tests replace.
 */
import { useCallback, useEffect, useId, useRef, useState } from "react";

import {
  createTransactionsApi,
  type ApiFailure,
  type ApiResult,
  type Balance,
  type HistoryQuery,
  type Transaction,
  type TransactionsApi,
} from "@/api/client";
import { SIGN_IN_PATH } from "@/auth/access-token";

import { BalanceCard } from "./BalanceCard";
import styles from "./billing.module.css";
import { FilterBar } from "./FilterBar";
import { hasFilters, type HistoryFilters } from "./filters";
import { HistoryTable } from "./HistoryTable";
import { HistorySkeleton } from "./Skeletons";

type More = { state: "idle" } | { state: "loading" } | { state: "failed"; failure: ApiFailure };

interface History {
  rows: Transaction[];
  nextCursor: string | null;
}

type View =
  | { phase: "loading" }
  | { phase: "failed"; failure: ApiFailure }
  | { phase: "ready"; history: History; more: More };

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

export function Billing({ filters, onFiltersChange, api = defaultApi(), pageSize = 20 }: BillingProps) {
  const { type, status } = filters;
  const [balance, setBalance] = useState<Balance | null>(null);
  const [view, setView] = useState<View>({ phase: "loading" });
  const [attempt, setAttempt] = useState(0);
  const [announcement, setAnnouncement] = useState("");
  const [focusRowId, setFocusRowId] = useState<string | null>(null);
  // The signal of the current load: a newer load (filters changed, Retry)
  // aborts it, so no answer to an older question is ever shown.
  const loadSignal = useRef<AbortSignal | undefined>(undefined);
  const loadingMore = useRef(false);
  const historyHeadingId = useId();

  useEffect(() => {
    const controller = new AbortController();
    loadSignal.current = controller.signal;
    loadingMore.current = false;
    setView({ phase: "loading" });
    const query: HistoryQuery = { limit: pageSize, ...(type && { type }), ...(status && { status }) };
    void Promise.all([api.getBalance(controller.signal), api.listTransactions(query, controller.signal)]).then(
      ([balanceResult, pageResult]) => {
        if (controller.signal.aborted) return;
        if (!balanceResult.ok || !pageResult.ok) {
          setBalance(null); // no longer vouched for: Retry starts from a skeleton
          setView({ phase: "failed", failure: mostSevere(balanceResult, pageResult) });
          return;
        }
        setBalance(balanceResult.data);
        setAnnouncement("");
        setView({
          phase: "ready",
          history: { rows: pageResult.data.data, nextCursor: nextCursorOf(pageResult.data) },
          more: { state: "idle" },
        });
      },
    );
    return () => controller.abort();
  }, [api, type, status, pageSize, attempt]);

  const retry = useCallback(() => setAttempt((n) => n + 1), []);
  const focusDone = useCallback(() => setFocusRowId(null), []);

  const shownRows = view.phase === "ready" ? view.history.rows : null;
  const cursor = view.phase === "ready" ? view.history.nextCursor : null;
  const loadMore = useCallback(async () => {
    if (!shownRows || !cursor || loadingMore.current) return;
    const signal = loadSignal.current;
    loadingMore.current = true;
    setView((current) => (current.phase === "ready" ? { ...current, more: { state: "loading" } } : current));
    const query: HistoryQuery = { limit: pageSize, cursor, ...(type && { type }), ...(status && { status }) };
    const result = await api.listTransactions(query, signal);
    if (signal?.aborted) return;
    loadingMore.current = false;
    if (!result.ok) {
      const { failure } = result;
      setView((current) => (current.phase === "ready" ? { ...current, more: { state: "failed", failure } } : current));
      return;
    }
    // A row inserted between two page fetches must not appear twice.
    const shown = new Set(shownRows.map((row) => row.id));
    const added = result.data.data.filter((row) => !shown.has(row.id));
    setView({
      phase: "ready",
      history: { rows: [...shownRows, ...added], nextCursor: nextCursorOf(result.data) },
      more: { state: "idle" },
    });
    setFocusRowId(added[0]?.id ?? null);
    setAnnouncement(
      `${added.length} more ${added.length === 1 ? "transaction" : "transactions"} loaded` +
        (result.data.has_more ? "." : ". That is all of them."),
    );
  }, [api, shownRows, cursor, pageSize, type, status]);

  // The balance card keeps its place in every state, so the page does not change shape when a load
  // fails. A failed load is one failure for the whole page (the two reads are one load, and Retry repeats
  // both): the card says "Balance unavailable" with the same reason as the history's error, whichever
  // read failed, and never numbers it no longer vouches for. On a 401 or without a token the card says
  // so too, still with no numbers (they are shown only to a signed-in user), and the session panel takes
  // the history's place with the one way out, signing in: no Retry, which could not help, and no filters.
  const balanceError = view.phase === "failed" ? failureMessage(view.failure) : null;

  if (view.phase === "failed" && (view.failure.kind === "unauthorized" || view.failure.kind === "signed-out")) {
    return (
      <div className={styles.billing}>
        <BalanceCard balance={null} error={balanceError} />
        <SessionPanel expired={view.failure.kind === "unauthorized"} />
      </div>
    );
  }

  return (
    <div className={styles.billing}>
      <BalanceCard balance={balance} error={balanceError} />
      <section className={styles.history} aria-labelledby={historyHeadingId}>
        <div className={styles.historyHeader}>
          <h2 id={historyHeadingId} className={styles.sectionTitle}>
            History
          </h2>
          <FilterBar filters={filters} onChange={onFiltersChange} />
        </div>
        {view.phase === "loading" && <HistorySkeleton />}
        {view.phase === "failed" && <ErrorPanel failure={view.failure} onRetry={retry} />}
        {view.phase === "ready" && view.history.rows.length === 0 && (
          <EmptyState filtered={hasFilters(filters)} onClearFilters={() => onFiltersChange({})} />
        )}
        {view.phase === "ready" && view.history.rows.length > 0 && (
          <>
            <HistoryTable
              rows={view.history.rows}
              labelledBy={historyHeadingId}
              focusRowId={focusRowId}
              onFocused={focusDone}
            />
            <LoadMore more={view.more} hasMore={view.history.nextCursor !== null} onLoadMore={loadMore} />
          </>
        )}
        <p className={styles.visuallyHidden} aria-live="polite">
          {announcement}
        </p>
      </section>
    </div>
  );
}

function nextCursorOf(page: { has_more: boolean; next_cursor: string | null }): string | null {
  return page.has_more ? page.next_cursor : null;
}

/** A 401 outranks everything (signing in again is the only fix), then being signed out. */
function mostSevere(...results: ApiResult<unknown>[]): ApiFailure {
  const failures = results.flatMap((result) => (result.ok ? [] : [result.failure]));
  return (
    failures.find((failure) => failure.kind === "unauthorized") ??
    failures.find((failure) => failure.kind === "signed-out") ??
    failures[0] ?? { kind: "network" }
  );
}

function failureMessage(failure: ApiFailure): string {
  switch (failure.kind) {
    case "problem":
      return failure.title;
    case "network":
      return "The billing service could not be reached.";
    case "unauthorized":
      return "Your session has expired — sign in again";
    case "signed-out":
      return "You are signed out.";
  }
}

function signInHref(): string {
  if (typeof window === "undefined") return SIGN_IN_PATH;
  const back = window.location.pathname + window.location.search;
  return `${SIGN_IN_PATH}?next=${encodeURIComponent(back)}`;
}

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
  return (
    <div className={styles.panel} data-testid="history-empty">
      <h3 className={styles.panelTitle}>No transactions yet</h3>
      <p className={styles.panelText}>
        Buy credits to get started: your purchases, and the credits each generation uses, will be listed here.
      </p>
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
