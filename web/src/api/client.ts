/**
 * The typed client for the transactions service. Types come from
 * `schema.d.ts`, generated from ../openapi.yaml by `npm run gen:api`; every
 * call goes through openapi-fetch on those types, and every outcome is turned
 * into a small result the page can branch on.
 */
import createClient from "openapi-fetch";

import { getAccessToken } from "@/auth/access-token";

import type { components, paths } from "./schema";

export type Transaction = components["schemas"]["Transaction"];
export type TransactionType = components["schemas"]["TransactionType"];
export type TransactionStatus = components["schemas"]["TransactionStatus"];
export type TransactionPage = components["schemas"]["TransactionPage"];
export type TransactionDetail = components["schemas"]["TransactionDetail"];
export type Posting = components["schemas"]["Posting"];
export type Balance = components["schemas"]["Balance"];
export type BalanceAt = components["schemas"]["BalanceAt"];
export type Statement = components["schemas"]["Statement"];
export type UsageSummary = components["schemas"]["UsageSummary"];
export type UsageGranularity = UsageSummary["granularity"];
export type HistoryQuery = NonNullable<paths["/api/transactions"]["get"]["parameters"]["query"]>;
export type StatementQuery = paths["/api/statements"]["get"]["parameters"]["query"];
export type UsageSummaryQuery = NonNullable<paths["/api/usage/summary"]["get"]["parameters"]["query"]>;
export type ExportQuery = Pick<NonNullable<paths["/api/transactions/export"]["get"]["parameters"]["query"]>, "type" | "status">;

/** A downloaded export: the file and the name the service gave it (null when the browser hid it). */
export interface ExportFile {
  blob: Blob;
  filename: string | null;
}

/** Why a call brought no data. */
export type ApiFailure =
  /** No token: nobody is signed in. No request was sent. */
  | { kind: "signed-out" }
  /** 401: the token expired or was refused. */
  | { kind: "unauthorized" }
  /** Any other HTTP error; `title` is the problem's title (RFC 9457). */
  | { kind: "problem"; status: number; title: string }
  /** No answer at all: the service is down or unreachable. */
  | { kind: "network" };

export type ApiResult<T> = { ok: true; data: T } | { ok: false; failure: ApiFailure };

export interface TransactionsApi {
  listTransactions(query: HistoryQuery, signal?: AbortSignal): Promise<ApiResult<TransactionPage>>;
  getBalance(signal?: AbortSignal): Promise<ApiResult<Balance>>;
  /** The totals as the ledger had recorded them at `at` (an RFC 3339 instant, not in the future). */
  getBalanceAt(at: string, signal?: AbortSignal): Promise<ApiResult<BalanceAt>>;
  getTransaction(id: string, signal?: AbortSignal): Promise<ApiResult<TransactionDetail>>;
  getStatement(query: StatementQuery, signal?: AbortSignal): Promise<ApiResult<Statement>>;
  getUsageSummary(query: UsageSummaryQuery, signal?: AbortSignal): Promise<ApiResult<UsageSummary>>;
  /** Every transaction matching the filters, as the service's CSV file. */
  exportTransactions(query: ExportQuery, signal?: AbortSignal): Promise<ApiResult<ExportFile>>;
}

export interface TransactionsApiOptions {
  /** The service's origin; defaults to NEXT_PUBLIC_TRANSACTIONS_API_URL, inlined at build time. */
  baseUrl?: string;
  fetch?: typeof globalThis.fetch;
  getToken?: () => Promise<string | null>;
}

export function createTransactionsApi(options: TransactionsApiOptions = {}): TransactionsApi {
  const getToken = options.getToken ?? getAccessToken;
  const baseUrl = options.baseUrl ?? process.env.NEXT_PUBLIC_TRANSACTIONS_API_URL;
  const client = createClient<paths>({
    baseUrl,
    // Resolved per call, so that a test or a polyfill installed later is used.
    fetch: (request) => (options.fetch ?? globalThis.fetch)(request),
    // Bearer tokens, never cookies: the service does not allow credentials.
    credentials: "omit",
    cache: "no-store",
  });

  async function call<T>(
    send: (headers: { Authorization: string }) => Promise<{ data?: T; error?: unknown; response: Response }>,
  ): Promise<ApiResult<T>> {
    if (!baseUrl) {
      // NEXT_PUBLIC_TRANSACTIONS_API_URL is inlined by `next build`; without it there is no service to ask.
      console.error("NEXT_PUBLIC_TRANSACTIONS_API_URL was not set when the page was built.");
      return { ok: false, failure: { kind: "problem", status: 0, title: "The billing page is not configured" } };
    }
    let token: string | null;
    try {
      token = await getToken();
    } catch {
      // The identity provider could not be asked (offline, say): like no answer from the service.
      return { ok: false, failure: { kind: "network" } };
    }
    if (!token) return { ok: false, failure: { kind: "signed-out" } };
    let outcome: { data?: T; error?: unknown; response: Response };
    try {
      outcome = await send({ Authorization: `Bearer ${token}` });
    } catch {
      // fetch rejects only when no answer came (or the caller aborted, which it checks itself).
      return { ok: false, failure: { kind: "network" } };
    }
    const { data, error, response } = outcome;
    if (response.ok && data !== undefined) return { ok: true, data };
    if (response.status === 401) return { ok: false, failure: { kind: "unauthorized" } };
    return { ok: false, failure: { kind: "problem", status: response.status, title: problemTitle(error, response) } };
  }

  return {
    listTransactions: (query, signal) =>
      call((headers) => client.GET("/api/transactions", { params: { query }, headers, signal })),
    // Without `at` the service answers `Balance`; `BalanceAt` (no split, no expiry) only with it.
    getBalance: async (signal) =>
      narrow(await call((headers) => client.GET("/api/balance", { headers, signal })), (data) => "paid" in data),
    getBalanceAt: async (at, signal) =>
      narrow(
        await call((headers) => client.GET("/api/balance", { params: { query: { at } }, headers, signal })),
        (data) => "at" in data,
      ),
    getTransaction: (id, signal) =>
      call((headers) =>
        client.GET("/api/transactions/{transaction_id}", { params: { path: { transaction_id: id } }, headers, signal }),
      ),
    getStatement: (query, signal) =>
      call((headers) => client.GET("/api/statements", { params: { query }, headers, signal })),
    getUsageSummary: (query, signal) =>
      call((headers) => client.GET("/api/usage/summary", { params: { query }, headers, signal })),
    exportTransactions: async (query, signal) => {
      let filename: string | null = null;
      const result = await call(async (headers) => {
        const outcome = await client.GET("/api/transactions/export", {
          params: { query: { format: "csv", ...query } },
          headers,
          signal,
          parseAs: "blob",
        });
        filename = attachmentName(outcome.response.headers.get("Content-Disposition"));
        return outcome;
      });
      return result.ok ? { ok: true, data: { blob: result.data as Blob, filename } } : result;
    },
  };
}

/** One shape of a `oneOf` answer, or a problem when the service sent the other one. */
function narrow<T, U extends T>(result: ApiResult<T>, is: (data: T) => boolean): ApiResult<U> {
  if (!result.ok) return result;
  if (is(result.data)) return { ok: true, data: result.data as U };
  return { ok: false, failure: { kind: "problem", status: 200, title: "The billing service sent an unexpected answer" } };
}

/**
 * The file name of `Content-Disposition: attachment; filename="..."` (RFC 6266), or null. The service
 * must list the header in `Access-Control-Expose-Headers` for a page on another origin to read it.
 */
export function attachmentName(header: string | null): string | null {
  if (!header) return null;
  const extended = /filename\*\s*=\s*UTF-8''([^;]+)/i.exec(header);
  if (extended) {
    try {
      return safeFileName(decodeURIComponent(extended[1]!.trim()));
    } catch {
      // a malformed escape: fall back to the plain parameter
    }
  }
  const plain = /filename\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]+))/i.exec(header);
  const name = plain?.[1]?.replace(/\\(.)/g, "$1") ?? plain?.[2];
  return name ? safeFileName(name) : null;
}

/** No directories in a name the browser saves: only its last segment. */
function safeFileName(name: string): string | null {
  const base = name.split(/[\\/]/).pop()?.trim();
  return base || null;
}

/** The problem's `title`, or a plain phrase when the body is not a problem (a proxy's HTML page, say). */
function problemTitle(body: unknown, response: Response): string {
  if (typeof body === "object" && body !== null && "title" in body) {
    const { title } = body as { title: unknown };
    if (typeof title === "string" && title.trim()) return title.trim().slice(0, 200);
  }
  return response.status >= 500 ? "The billing service had a problem" : `Request failed (HTTP ${response.status})`;
}
