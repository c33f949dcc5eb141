import { describe, expect, it } from "vitest";

import { filtersFromSearchParams, filtersToSearch } from "@/billing/filters";

describe("filters in the URL", () => {
  it.each([
    ["", {}],
    ["type=usage", { type: "usage" }],
    ["status=pending", { status: "pending" }],
    ["type=purchase&status=failed", { type: "purchase", status: "failed" }],
    // values the API does not know are dropped, not sent
    ["type=refund&status=done", {}],
    ["type=__proto__", {}],
    ["type=Usage", {}],
  ])("?%s reads as %j", (search, expected) => {
    expect(filtersFromSearchParams(new URLSearchParams(search))).toEqual(expected);
  });

  it.each([
    [{}, ""],
    [{ type: "usage" as const }, "type=usage"],
    [{ type: "purchase" as const, status: "completed" as const }, "type=purchase&status=completed"],
  ])("%j writes ?%s", (filters, expected) => {
    expect(filtersToSearch(filters)).toBe(expected);
  });
});
