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
export type Balance = components["schemas"]["Balance"];
export type HistoryQuery = NonNullable<paths["/api/transactions"]["get"]["parameters"]["query"]>;

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
    getBalance: (signal) => call((headers) => client.GET("/api/balance", { headers, signal })),
  };
}

/** The problem's `title`, or a plain phrase when the body is not a problem (a proxy's HTML page, say). */
function problemTitle(body: unknown, response: Response): string {
  if (typeof body === "object" && body !== null && "title" in body) {
    const { title } = body as { title: unknown };
    if (typeof title === "string" && title.trim()) return title.trim().slice(0, 200);
  }
  return response.status >= 500 ? "The billing service had a problem" : `Request failed (HTTP ${response.status})`;
}
