/**
 * A stand-in for the transactions service behind the real typed client: tests
 * answer each request the client sends (through openapi-fetch) and see what
 * was asked.
 */
import { createTransactionsApi, type Balance, type Transaction } from "@/api/client";

export const BASE_URL = "http://transactions.test";
export const TOKEN = "test-token";
export const USER_ID = "3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10";

export interface Call {
  method: string;
  url: URL;
  path: string;
  query: Record<string, string>;
  authorization: string | null;
}

export type Answer = (call: Call) => Response | Promise<Response>;

export function fakeService(answer: Answer, token: string | null = TOKEN) {
  const calls: Call[] = [];
  const api = createTransactionsApi({
    baseUrl: BASE_URL,
    getToken: async () => token,
    fetch: async (input: RequestInfo | URL) => {
      const request = input as Request;
      const url = new URL(request.url);
      const call: Call = {
        method: request.method,
        url,
        path: url.pathname,
        query: Object.fromEntries(url.searchParams),
        authorization: request.headers.get("Authorization"),
      };
      calls.push(call);
      return answer(call);
    },
  });
  return { api, calls };
}

export function json(body: unknown, status = 200): Response {
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/json" } });
}

export function problem(status: number, title: string, code: string, detail = "Details for humans."): Response {
  const body = { type: `https://transactions.example/problems/${code}`, title, status, detail, code };
  return new Response(JSON.stringify(body), { status, headers: { "Content-Type": "application/problem+json" } });
}

/**
 * A balance of `available` credits (and `held` more), all paid unless `lots` says how many of them
 * are promotional and when the soonest of them expire.
 */
export function balance(
  available: number,
  held = 0,
  lots: { promotional?: number; nextExpiry?: Balance["next_expiry"] } = {},
): Balance {
  const promotional = lots.promotional ?? 0;
  return {
    user_id: USER_ID,
    balance: available + held,
    held,
    available,
    paid: available - promotional,
    promotional,
    next_expiry: lots.nextExpiry ?? null,
  };
}

/** `count` transactions, newest first, one minute apart, alternating purchases and usage. */
export function history(count: number, start = Date.UTC(2025, 5, 12, 9, 30, 15)): Transaction[] {
  return Array.from({ length: count }, (_, index) => {
    const purchase = index % 3 === 0;
    const pending = index % 5 === 4;
    const created = new Date(start - index * 60_000).toISOString().replace(".000Z", ".123456Z");
    return {
      id: `01975c3e-8a41-7c2b-9f1e-${String(index).padStart(12, "0")}`,
      user_id: USER_ID,
      type: purchase ? "purchase" : "usage",
      amount: purchase ? "9.99" : "0.00",
      credits: purchase ? 500 : -20,
      description: `Entry ${index + 1}`,
      status: pending ? "pending" : "completed",
      created_at: created,
      updated_at: created,
      hold_expires_at: pending && !purchase ? new Date(Date.parse(created) + 3_600_000).toISOString() : null,
      // only a refund (its purchase) or a reversal (its usage) names another entry; tests that make one set it
      refunds: null,
      reverses: null,
      // the caller's own: none on these rows
      metadata: {},
      reference: null,
    } satisfies Transaction;
  });
}

/** Pages of `rows` the way the service cuts them: `limit` at a time, the cursor an offset. */
export function pageOf(rows: Transaction[], query: Record<string, string>) {
  const limit = Number(query.limit ?? 20);
  const offset = query.cursor ? Number(query.cursor.replace("c", "")) : 0;
  const data = rows.slice(offset, offset + limit);
  const hasMore = offset + limit < rows.length;
  return { data, has_more: hasMore, next_cursor: hasMore ? `c${offset + limit}` : null };
}

export function deferred<T>() {
  let resolve!: (value: T) => void;
  const promise = new Promise<T>((done) => {
    resolve = done;
  });
  return { promise, resolve };
}
