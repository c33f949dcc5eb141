import { afterEach, describe, expect, it, vi } from "vitest";

import { createTransactionsApi } from "@/api/client";

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
