import { describe, expect, it } from "vitest";

import { filtersFromSearchParams, filtersToSearch, TYPE_FILTER_LABELS } from "@/billing/filters";

describe("filters in the URL", () => {
  it.each([
    ["", {}],
    ["type=usage", { type: "usage" }],
    ["status=pending", { status: "pending" }],
    ["type=purchase&status=failed", { type: "purchase", status: "failed" }],
    ["type=grant", { type: "grant" }],
    ["type=expiration", { type: "expiration" }],
    ["type=grant&status=completed", { type: "grant", status: "completed" }],
    ["type=refund", { type: "refund" }],
    ["type=reversal", { type: "reversal" }],
    ["type=adjustment", { type: "adjustment" }],
    ["type=refund&status=completed", { type: "refund", status: "completed" }],
    // values the API does not know are dropped, not sent
    ["type=chargeback&status=done", {}],
    ["type=refunds", {}],
    ["type=Refund", {}],
    ["type=__proto__", {}],
    ["type=Usage", {}],
  ])("?%s reads as %j", (search, expected) => {
    expect(filtersFromSearchParams(new URLSearchParams(search))).toEqual(expected);
  });

  it.each([
    [{}, ""],
    [{ type: "usage" as const }, "type=usage"],
    [{ type: "purchase" as const, status: "completed" as const }, "type=purchase&status=completed"],
    [{ type: "grant" as const }, "type=grant"],
    [{ type: "expiration" as const }, "type=expiration"],
    [{ type: "refund" as const }, "type=refund"],
    [{ type: "reversal" as const }, "type=reversal"],
    [{ type: "adjustment" as const, status: "completed" as const }, "type=adjustment&status=completed"],
  ])("%j writes ?%s", (filters, expected) => {
    expect(filtersToSearch(filters)).toBe(expected);
  });

  it.each(["refund", "reversal", "adjustment"] as const)("?type=%s survives a round trip through the URL", (type) => {
    const search = filtersToSearch({ type, status: "completed" });
    expect(filtersFromSearchParams(new URLSearchParams(search))).toEqual({ type, status: "completed" });
  });
});

describe("the type filter's choices", () => {
  it("offers every type, free and expired credits, refunds, returned credits and adjustments included, in this order", () => {
    expect(Object.entries(TYPE_FILTER_LABELS)).toEqual([
      ["purchase", "Purchases"],
      ["usage", "Usage"],
      ["grant", "Free credits"],
      ["refund", "Refunds"],
      ["reversal", "Returned credits"],
      ["adjustment", "Adjustments"],
      ["expiration", "Expired credits"],
    ]);
  });
});
