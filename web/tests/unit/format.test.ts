import { describe, expect, it } from "vitest";

import {
  formatAmount,
  formatBucket,
  formatBucketTick,
  formatCredits,
  formatDateTime,
  formatExpiringCredits,
  formatMonth,
  formatSignedCredits,
  formatUtc,
  recentMonths,
  TYPE_LABELS,
} from "@/billing/format";

const MINUS = "\u2212";

describe("formatSignedCredits", () => {
  it.each([
    [500, "en-US", "+500"],
    [-20, "en-US", `${MINUS}20`],
    [1200, "en-US", "+1,200"],
    [-1_000_000_000, "en-US", `${MINUS}1,000,000,000`],
    [1, "en-US", "+1"],
    [-1, "en-US", `${MINUS}1`],
    [1200, "de-DE", "+1.200"],
  ])("%d in %s is %s", (credits, locale, expected) => {
    expect(formatSignedCredits(credits, locale)).toBe(expected);
  });

  it("never uses a hyphen for the minus sign", () => {
    expect(formatSignedCredits(-20, "en-US")).not.toContain("-");
  });
});

describe("TYPE_LABELS", () => {
  it("names every type in the customer's words", () => {
    expect(TYPE_LABELS).toEqual({
      purchase: "Purchase",
      usage: "Usage",
      grant: "Free credits",
      refund: "Refund",
      reversal: "Credits returned",
      adjustment: "Adjustment",
      expiration: "Expired",
    });
  });
});

describe("formatExpiringCredits", () => {
  it.each([
    [100, "en-US", "100 credits expire"],
    [1, "en-US", "1 credit expires"],
    [2, "en-US", "2 credits expire"],
    [12500, "en-US", "12,500 credits expire"],
  ])("%d in %s is %s", (credits, locale, expected) => {
    expect(formatExpiringCredits(credits, locale)).toBe(expected);
  });
});

describe("formatCredits", () => {
  it.each([
    [0, "0"],
    [1587, "1,587"],
    [1234567, "1,234,567"],
  ])("%d is %s", (credits, expected) => {
    expect(formatCredits(credits, "en-US")).toBe(expected);
  });
});

describe("formatAmount", () => {
  it.each([
    ["9.99", "purchase", "en-US", "$9.99"],
    ["19.99", "purchase", "en-US", "$19.99"],
    ["1234.56", "purchase", "en-US", "$1,234.56"],
    ["0.00", "purchase", "en-US", "$0.00"],
    ["0.00", "usage", "en-US", "\u2014"],
    ["0", "usage", "en-US", "\u2014"],
    ["0.25", "usage", "en-US", "$0.25"],
    // grants are free and expirations refund nothing: no "$0.00" either
    ["0.00", "grant", "en-US", "\u2014"],
    ["0", "grant", "en-US", "\u2014"],
    ["0.00", "expiration", "en-US", "\u2014"],
    ["0", "expiration", "en-US", "\u2014"],
    // reversals and adjustments move credits, never money: no "$0.00" either
    ["0.00", "reversal", "en-US", "\u2014"],
    ["0", "reversal", "en-US", "\u2014"],
    ["0.00", "adjustment", "en-US", "\u2014"],
    ["0", "adjustment", "en-US", "\u2014"],
    // a refund shows the dollars given back, and "$0.00" when credits were taken back without money
    ["5.00", "refund", "en-US", "$5.00"],
    ["1234.56", "refund", "en-US", "$1,234.56"],
    ["0.00", "refund", "en-US", "$0.00"],
    // should one ever carry money, it is shown
    ["1.50", "grant", "en-US", "$1.50"],
    ["0.01", "expiration", "en-US", "$0.01"],
    ["0.50", "reversal", "en-US", "$0.50"],
    ["2.00", "adjustment", "en-US", "$2.00"],
    // exact decimal: no binary floating point on the way
    ["9999999999.99", "purchase", "en-US", "$9,999,999,999.99"],
    ["0.10", "purchase", "en-US", "$0.10"],
  ] as const)("%s for a %s in %s is %s", (amount, type, locale, expected) => {
    expect(formatAmount(amount, type, locale)).toBe(expected);
  });

  it("follows the viewer's locale", () => {
    expect(formatAmount("1234.56", "purchase", "de-DE").replace(/\s/g, " ")).toBe("1.234,56 $");
  });
});

describe("formatDateTime", () => {
  const normalise = (text: string) => text.replace(/[\u202f\u00a0]/g, " ");

  it.each([
    ["2025-06-12T09:30:15.123456Z", "en-US", "UTC", "Jun 12, 2025, 9:30 AM"],
    ["2025-06-12T09:30:15.123456Z", "en-US", "America/New_York", "Jun 12, 2025, 5:30 AM"],
    ["2025-06-12T09:30:15.123456Z", "en-US", "Asia/Tokyo", "Jun 12, 2025, 6:30 PM"],
    // the day changes with the zone
    ["2025-01-01T02:00:00.000000Z", "en-US", "America/Los_Angeles", "Dec 31, 2024, 6:00 PM"],
    ["2025-06-12T09:30:15.123456Z", "en-GB", "Europe/London", "12 Jun 2025, 10:30"],
    ["2025-06-12T09:30:15.123456Z", "de-DE", "Europe/Berlin", "12.06.2025, 11:30"],
  ])("%s in %s, %s is %s", (iso, locale, zone, expected) => {
    expect(normalise(formatDateTime(iso, locale, zone))).toBe(expected);
  });

  it("shows an unparseable timestamp as it came rather than failing", () => {
    expect(formatDateTime("yesterday", "en-US", "UTC")).toBe("yesterday");
  });
});

describe("formatUtc", () => {
  it.each([
    ["2025-06-12T09:30:15.123456Z", "2025-06-12 09:30:15.123456 UTC"],
    ["2025-06-12T09:30:15Z", "2025-06-12 09:30:15 UTC"],
    ["2025-06-12T11:30:15.5+02:00", "2025-06-12 09:30:15.500 UTC"],
  ])("%s is %s", (iso, expected) => {
    expect(formatUtc(iso)).toBe(expected);
  });
});

describe("usage buckets and months", () => {
  it.each([
    ["2026-11-30", "day", "Nov 30", "Nov 30, 2026"],
    ["2026-11-30", "week", "Nov 30", "Week of Nov 30, 2026"],
    ["2026-11-01", "month", "Nov", "November 2026"],
  ] as const)("%s by %s reads %s on the axis and %s in full", (start, granularity, tick, full) => {
    expect(formatBucketTick(start, granularity, "en-US")).toBe(tick);
    expect(formatBucket(start, granularity, "en-US")).toBe(full);
  });

  it("reads a bucket's date as a date, never shifted into the day before by a time zone", () => {
    // the calendar date the service cut in the viewer's zone: Dec 1 stays Dec 1, wherever the viewer is
    expect(formatBucket("2026-12-01", "day", "en-US")).toBe("Dec 1, 2026");
    expect(formatMonth("2026-01", "de-DE")).toBe("Januar 2026");
  });

  it("lists the last 12 months in the viewer's zone, the current one first, across a new year", () => {
    const months = recentMonths(new Date("2026-02-10T12:00:00Z"), "UTC");
    expect(months).toEqual([
      "2026-02", "2026-01", "2025-12", "2025-11", "2025-10", "2025-09",
      "2025-08", "2025-07", "2025-06", "2025-05", "2025-04", "2025-03",
    ]);
  });

  it("takes the current month from the viewer's zone", () => {
    // 02:00 on Jan 1 in UTC is still Dec 31 in New York
    const newYear = new Date("2027-01-01T02:00:00Z");
    expect(recentMonths(newYear, "UTC", 1)).toEqual(["2027-01"]);
    expect(recentMonths(newYear, "America/New_York", 1)).toEqual(["2026-12"]);
  });
});
