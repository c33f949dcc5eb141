import { describe, expect, it } from "vitest";

import { checkPastedToken } from "@/auth/token-check";

const NOW = 1_800_000_000;

function token(payload: object): string {
  const encode = (part: object) => Buffer.from(JSON.stringify(part)).toString("base64url");
  return `${encode({ alg: "HS256", typ: "JWT" })}.${encode(payload)}.c2lnbmF0dXJl`;
}

describe("checkPastedToken", () => {
  it("accepts a token that has not expired", () => {
    expect(checkPastedToken(token({ sub: "u", iat: NOW - 60, exp: NOW + 60 }), NOW)).toEqual({ ok: true });
  });

  it("says when a token has expired, and how to get a fresh one", () => {
    const check = checkPastedToken(token({ sub: "u", iat: NOW - 7200, exp: NOW - 3600 }), NOW);
    expect(check.ok).toBe(false);
    expect(check.problem).toContain("expired at 2027-01-15 07:00:00 UTC");
    expect(check.problem).toContain("make run");
  });

  it("treats the very second of expiry as expired, as the service does", () => {
    expect(checkPastedToken(token({ sub: "u", exp: NOW }), NOW).ok).toBe(false);
  });

  it("refuses a token without an expiry", () => {
    expect(checkPastedToken(token({ sub: "u" }), NOW).problem).toContain("no expiry");
  });

  it("recognises a service's API key", () => {
    expect(checkPastedToken("tsk_0123456789AB_" + "x".repeat(49), NOW).problem).toContain("API key");
  });

  it.each(["", "not-a-token", "a.b", "a.!!!.c", `x.${Buffer.from("[1]").toString("base64url")}.y`])(
    "refuses %j as not a token",
    (pasted) => {
      expect(checkPastedToken(pasted, NOW).problem).toContain("not a user token");
    },
  );
});
