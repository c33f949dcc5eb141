/**
 * A stand-in for the transactions service behind the real typed client: tests
 * answer each request the client sends (through openapi-fetch) and see what
 * was asked.
 */
import {
  createTransactionsApi,
  type Balance,
  type Posting,
  type Statement,
  type Transaction,
  type TransactionDetail,
  type UsageGranularity,
  type UsageSummary,
} from "@/api/client";

export const BASE_URL = "http://transactions.test";
export const TOKEN = "test-token";
export const USER_ID = "3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10";

export interface Call {
  method: string;
  url: URL;
  path: string;
  query: Record<string, string>;
  authorization: string | null;
  /** The request's signal, aborted when the page no longer waits for the answer. */
  signal: AbortSignal;
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
        signal: request.signal,
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

/** The days a summary's buckets start on, oldest first, ending with the bucket that holds `today`. */
function bucketStarts(granularity: UsageGranularity, today: string): string[] {
  const end = new Date(`${today}T00:00:00Z`);
  const day = (date: Date) => date.toISOString().slice(0, 10);
  if (granularity === "day") {
    return Array.from({ length: 30 }, (_, back) => day(new Date(end.getTime() - (29 - back) * 86_400_000)));
  }
  if (granularity === "week") {
    const monday = new Date(end.getTime() - ((end.getUTCDay() + 6) % 7) * 86_400_000);
    return Array.from({ length: 12 }, (_, back) => day(new Date(monday.getTime() - (11 - back) * 7 * 86_400_000)));
  }
  return Array.from({ length: 12 }, (_, back) =>
    day(new Date(Date.UTC(end.getUTCFullYear(), end.getUTCMonth() - (11 - back), 1))),
  );
}

/**
 * A usage summary the way the service shapes it: `spent` maps a bucket's index (from the oldest) to
 * its credits per series, in the order of `series` (one number, and no series, without a split).
 */
export function usageSummary(
  granularity: UsageGranularity,
  spent: Record<number, number[]> = {},
  options: { series?: UsageSummary["series"]; today?: string; tz?: string } = {},
): UsageSummary {
  const series = options.series ?? [];
  const starts = bucketStarts(granularity, options.today ?? "2026-12-01");
  const buckets = starts.map((start, index) => {
    const split = spent[index] ?? series.map(() => 0);
    const credits = split.reduce((sum, value) => sum + value, 0);
    const startsAt = `${start}T00:00:00.000000Z`;
    return { start, starts_at: startsAt, ends_at: startsAt, credits, split: series.length ? split : [] };
  });
  return {
    user_id: USER_ID,
    granularity,
    from: starts[0]!,
    to: options.today ?? "2026-12-01",
    tz: options.tz ?? "UTC",
    group_by: series.length ? "metadata.model" : null,
    series,
    total: buckets.reduce((sum, bucket) => sum + bucket.credits, 0),
    buckets,
  };
}

/** A month's statement; every line zero unless `lines` says otherwise, the closing balance their sum. */
export function statement(month: string, lines: Partial<Statement> = {}): Statement {
  const [year, number] = month.split("-").map(Number) as [number, number];
  const next = number === 12 ? `${year + 1}-01` : `${year}-${String(number + 1).padStart(2, "0")}`;
  const base: Statement = {
    user_id: USER_ID,
    month,
    tz: "UTC",
    starts_at: `${month}-01T00:00:00.000000Z`,
    ends_at: `${next}-01T00:00:00.000000Z`,
    final: true,
    opening_balance: 0,
    purchases: 0,
    grants: 0,
    usage: 0,
    refunds: 0,
    reversals: 0,
    adjustments: 0,
    expirations: 0,
    carried_in: 0,
    closing_balance: 0,
    closing_held: 0,
    amount_paid: "0.00",
    amount_refunded: "0.00",
    ...lines,
  };
  if (lines.closing_balance === undefined) {
    base.closing_balance =
      base.opening_balance + base.purchases + base.grants + base.usage + base.refunds + base.reversals +
      base.adjustments + base.expirations + base.carried_in;
  }
  return base;
}

/** A row with its postings: one posting of all its credits, unless it failed (none). */
export function detailOf(row: Transaction, postings?: Posting[]): TransactionDetail {
  return {
    ...row,
    postings: postings ?? (row.status === "failed"
      ? []
      : [{ lot_id: "01975c00-0000-7000-8000-00000000000a", credits: row.credits, held: 0, created_at: row.created_at }]),
  };
}

/** The export as the service sends it: a CSV of the rows, named in `Content-Disposition`. */
export function csvOf(rows: Transaction[], filename = `transactions-${USER_ID}-2026-12-01.csv`): Response {
  const lines = ["id,created_at,type,status,credits,amount,description", ...rows.map((row) =>
    [row.id, row.created_at, row.type, row.status, row.credits, row.amount, JSON.stringify(row.description)].join(","),
  )];
  return new Response(lines.join("\r\n") + "\r\n", {
    status: 200,
    headers: { "Content-Type": "text/csv; charset=utf-8", "Content-Disposition": `attachment; filename="${filename}"` },
  });
}

/**
 * A service holding `rows` (newest first) and a balance, answering every read the page makes:
 * history pages and filters, one transaction with its postings, the export, an empty usage summary
 * and empty statements, unless `extra` answers first.
 */
export function ledger(rows: Transaction[], totals = balance(1587, 50), extra?: (call: Call) => Response | undefined): Answer {
  return (call) => {
    const answered = extra?.(call);
    if (answered) return answered;
    const { path, query } = call;
    const filtered = rows.filter(
      (row) => (!query.type || row.type === query.type) && (!query.status || row.status === query.status),
    );
    if (path === "/api/balance") return json(totals);
    if (path === "/api/transactions") return json(pageOf(filtered, query));
    if (path === "/api/transactions/export") return csvOf(filtered);
    if (path.startsWith("/api/transactions/")) {
      const row = rows.find((entry) => entry.id === path.slice("/api/transactions/".length));
      return row ? json(detailOf(row)) : problem(404, "Not Found", "not_found");
    }
    if (path === "/api/usage/summary") {
      return json(usageSummary((query.granularity ?? "day") as UsageGranularity, {}, { tz: query.tz }));
    }
    if (path === "/api/statements") return json(statement(query.month ?? "2026-12", { tz: query.tz ?? "UTC" }));
    return problem(404, "Not Found", "not_found");
  };
}
