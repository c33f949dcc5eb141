/**
 * How the billing page asks the service through TanStack Query: the query keys, the one rule for
 * retrying, and the client the page shares. A query function throws `ApiFailureError` for a call
 * that brought no data, so that a failure is a query error the page can branch on by `kind`.
 */
import { QueryClient, type DefaultOptions } from "@tanstack/react-query";

import type { ApiFailure, ApiResult, HistoryQuery, UsageGranularity } from "@/api/client";

export class ApiFailureError extends Error {
  constructor(readonly failure: ApiFailure) {
    super(failure.kind === "problem" ? failure.title : failure.kind);
    this.name = "ApiFailureError";
  }
}

export function unwrap<T>(result: ApiResult<T>): T {
  if (!result.ok) throw new ApiFailureError(result.failure);
  return result.data;
}

/** The failure behind a query's error; anything unexpected reads as no answer. */
export function failureOf(error: unknown): ApiFailure {
  return error instanceof ApiFailureError ? error.failure : { kind: "network" };
}

/** At most this many more tries after the first, for an answer that may come out differently. */
export const MAX_RETRIES = 2;

/**
 * Retry what may pass on its own (no answer, a 5xx, a 429), never a 4xx: a refused token, a bad
 * parameter or a missing entry answers the same the next time, and a 401 has one fix, signing in.
 */
export function shouldRetry(failureCount: number, error: unknown): boolean {
  if (failureCount >= MAX_RETRIES) return false;
  const failure = failureOf(error);
  if (failure.kind === "network") return true;
  return failure.kind === "problem" && (failure.status >= 500 || failure.status === 429);
}

export function createBillingQueryClient(queries: DefaultOptions["queries"] = {}): QueryClient {
  return new QueryClient({
    defaultOptions: {
      queries: {
        retry: shouldRetry,
        // A tab that comes back to the front shows what the ledger says now, once the answer is this old.
        staleTime: 15_000,
        refetchOnWindowFocus: true,
        ...queries,
      },
    },
  });
}

/** The keys of every query the page makes; `billing` first, so that one prefix names them all. */
export const billingKeys = {
  all: ["billing"] as const,
  balance: () => ["billing", "balance"] as const,
  history: (filters: Pick<HistoryQuery, "type" | "status">, pageSize: number) =>
    ["billing", "history", { type: filters.type ?? null, status: filters.status ?? null, pageSize }] as const,
  transaction: (id: string) => ["billing", "transaction", id] as const,
  usage: (granularity: UsageGranularity, timeZone: string) => ["billing", "usage", granularity, timeZone] as const,
  statement: (month: string, timeZone: string) => ["billing", "statement", month, timeZone] as const,
};

/** The viewer's IANA time zone ("Europe/Berlin"), which the summaries and statements are cut in. */
export function viewerTimeZone(): string {
  try {
    return Intl.DateTimeFormat().resolvedOptions().timeZone || "UTC";
  } catch {
    return "UTC";
  }
}
