import { afterEach, describe, expect, it, vi } from "vitest";

import { attachmentName, createTransactionsApi } from "@/api/client";

describe("the typed client", () => {
  afterEach(() => {
    vi.unstubAllEnvs();
    vi.restoreAllMocks();
  });

  it("refuses to call anything when the page was built without the service's URL", async () => {
    vi.stubEnv("NEXT_PUBLIC_TRANSACTIONS_API_URL", "");
    const logged = vi.spyOn(console, "error").mockImplementation(() => {});
    const fetch = vi.fn<typeof globalThis.fetch>();
    const api = createTransactionsApi({ fetch, getToken: async () => "token" });

    expect(await api.getBalance()).toEqual({
      ok: false,
      failure: { kind: "problem", status: 0, title: "The billing page is not configured" },
    });
    expect(fetch).not.toHaveBeenCalled();
    expect(logged).toHaveBeenCalledWith(expect.stringContaining("NEXT_PUBLIC_TRANSACTIONS_API_URL"));
  });

  it("reads the service's URL from NEXT_PUBLIC_TRANSACTIONS_API_URL and sends the token as a bearer token", async () => {
    vi.stubEnv("NEXT_PUBLIC_TRANSACTIONS_API_URL", "http://127.0.0.1:5000");
    const fetch = vi.fn<typeof globalThis.fetch>(
      async () =>
        new Response(JSON.stringify({ data: [], has_more: false, next_cursor: null }), {
          headers: { "Content-Type": "application/json" },
        }),
    );
    const api = createTransactionsApi({ fetch, getToken: async () => "secret-token" });

    const result = await api.listTransactions({ limit: 20, type: "usage", cursor: "abc" });

    expect(result).toEqual({ ok: true, data: { data: [], has_more: false, next_cursor: null } });
    const request = fetch.mock.calls[0]?.[0] as Request;
    expect(request.url).toBe("http://127.0.0.1:5000/api/transactions?limit=20&type=usage&cursor=abc");
    expect(request.headers.get("Authorization")).toBe("Bearer secret-token");
    expect(request.credentials).toBe("omit");
  });
});

describe("the typed client when the identity provider fails", () => {
  it("reports no answer, rather than failing the page, when getAccessToken() throws", async () => {
    const fetch = vi.fn<typeof globalThis.fetch>();
    const api = createTransactionsApi({
      baseUrl: "http://127.0.0.1:5000",
      fetch,
      getToken: async () => {
        throw new Error("offline");
      },
    });

    expect(await api.getBalance()).toEqual({ ok: false, failure: { kind: "network" } });
    expect(fetch).not.toHaveBeenCalled();
  });
});

describe("the typed client's reads of the second edition", () => {
  const user = "3f1c2a9e-6b7d-4c1e-9a55-0d2b8e7f4a10";

  function clientAnswering(body: BodyInit | null, init: ResponseInit = {}) {
    const fetch = vi.fn<typeof globalThis.fetch>(async () => new Response(body, init));
    const api = createTransactionsApi({ baseUrl: "http://127.0.0.1:5000", fetch, getToken: async () => "secret-token" });
    const request = () => fetch.mock.calls[0]?.[0] as Request;
    return { api, fetch, request };
  }

  const asJson = { headers: { "Content-Type": "application/json" } };

  it("takes only a Balance from GET /api/balance, and only a BalanceAt from GET /api/balance?at=", async () => {
    const at = { user_id: user, at: "2026-11-01T00:00:00.000000Z", balance: 600, held: 20, available: 580 };
    const now = { user_id: user, balance: 600, held: 20, available: 580, paid: 580, promotional: 0, next_expiry: null };

    const { api: answersAt } = clientAnswering(JSON.stringify(at), asJson);
    expect(await answersAt.getBalance()).toEqual({
      ok: false,
      failure: { kind: "problem", status: 200, title: "The billing service sent an unexpected answer" },
    });

    const { api, request } = clientAnswering(JSON.stringify(at), asJson);
    expect(await api.getBalanceAt("2026-11-01T00:00:00Z")).toEqual({ ok: true, data: at });
    expect(request().url).toBe("http://127.0.0.1:5000/api/balance?at=2026-11-01T00%3A00%3A00Z");

    const { api: answersNow } = clientAnswering(JSON.stringify(now), asJson);
    expect(await answersNow.getBalance()).toEqual({ ok: true, data: now });
  });

  it("asks for a month's statement and a usage summary in the viewer's zone", async () => {
    const statement = clientAnswering("{}", asJson);
    await statement.api.getStatement({ month: "2026-11", tz: "America/New_York" });
    expect(statement.request().url).toBe("http://127.0.0.1:5000/api/statements?month=2026-11&tz=America%2FNew_York");

    const usage = clientAnswering("{}", asJson);
    await usage.api.getUsageSummary({ granularity: "week", group_by: "metadata.model", tz: "Europe/Berlin" });
    expect(usage.request().url).toBe(
      "http://127.0.0.1:5000/api/usage/summary?granularity=week&group_by=metadata.model&tz=Europe%2FBerlin",
    );
  });

  it("reads one transaction with its postings", async () => {
    const { api, request } = clientAnswering(JSON.stringify({ id: "t1", postings: [] }), asJson);
    expect(await api.getTransaction("01975c3e-8a41-7c2b-9f1e-3d5a6b7c8d90")).toMatchObject({ ok: true });
    expect(request().url).toBe("http://127.0.0.1:5000/api/transactions/01975c3e-8a41-7c2b-9f1e-3d5a6b7c8d90");
  });

  it("downloads the export as a Blob named by Content-Disposition, with the token in a header", async () => {
    const csv = "id,credits\r\nabc,-20\r\n";
    const { api, request } = clientAnswering(csv, {
      headers: {
        "Content-Type": "text/csv; charset=utf-8",
        "Content-Disposition": `attachment; filename="transactions-${user}-2026-12-01.csv"`,
      },
    });

    const result = await api.exportTransactions({ type: "usage", status: "pending" });

    expect(request().url).toBe("http://127.0.0.1:5000/api/transactions/export?format=csv&type=usage&status=pending");
    expect(request().headers.get("Authorization")).toBe("Bearer secret-token");
    if (!result.ok) throw new Error("the export failed");
    expect(result.data.filename).toBe(`transactions-${user}-2026-12-01.csv`);
    expect(await result.data.blob.text()).toBe(csv);
  });

  it("reports a refused export by its problem's title", async () => {
    const { api } = clientAnswering(
      JSON.stringify({ type: "about:blank", title: "Export too large", status: 422, code: "export_too_large" }),
      { status: 422, headers: { "Content-Type": "application/problem+json" } },
    );
    expect(await api.exportTransactions({})).toEqual({
      ok: false,
      failure: { kind: "problem", status: 422, title: "Export too large" },
    });
  });
});

describe("the file name of an attachment", () => {
  it.each([
    ['attachment; filename="transactions-u-2026-12-01.csv"', "transactions-u-2026-12-01.csv"],
    ["attachment; filename=transactions.csv", "transactions.csv"],
    ["attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.csv; filename=\"resume.csv\"", "résumé.csv"],
    ['attachment; filename="../../etc/passwd"', "passwd"],
    ['attachment; filename="say \\"hi\\".csv"', 'say "hi".csv'],
    ["attachment", null],
    [null, null],
  ])("of %s is %s", (header, name) => {
    expect(attachmentName(header)).toBe(name);
  });
});
