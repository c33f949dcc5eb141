/**
 * What the development sign-in can tell about a pasted token before using it:
 * whether it is a service's API key, not a token at all, or already expired.
 * Nothing here verifies a signature; the service does that on every request.
 */

export interface TokenCheck {
  ok: boolean;
  /** Why the token cannot sign anyone in, for the person who pasted it. */
  problem?: string;
}

const FRESH_TOKEN_HINT =
  "Get a fresh one: restart `make run`, which prints a USER_TOKEN valid for 24 hours, " +
  "or run `flask --app wsgi tokens issue --user <user id> --expires-in 24h`.";

function payloadOf(token: string): Record<string, unknown> | null {
  const parts = token.split(".");
  if (parts.length !== 3 || !parts[1]) return null;
  try {
    const json = atob(parts[1].replace(/-/g, "+").replace(/_/g, "/"));
    const payload: unknown = JSON.parse(json);
    return payload !== null && typeof payload === "object" && !Array.isArray(payload)
      ? (payload as Record<string, unknown>)
      : null;
  } catch {
    return null;
  }
}

/** Check a pasted token at `nowSeconds` (seconds since the epoch). */
export function checkPastedToken(token: string, nowSeconds: number = Date.now() / 1000): TokenCheck {
  if (token.startsWith("tsk_")) {
    return {
      ok: false,
      problem: "This is a service's API key. The billing page signs in with a user's token (the USER_TOKEN line).",
    };
  }
  const payload = payloadOf(token);
  if (payload === null) {
    return { ok: false, problem: "This is not a user token: a token has three parts separated by dots." };
  }
  const exp = payload.exp;
  if (typeof exp !== "number") {
    return { ok: false, problem: `This token has no expiry (exp), so the service refuses it. ${FRESH_TOKEN_HINT}` };
  }
  if (exp <= nowSeconds) {
    const when = new Date(exp * 1000).toISOString().replace("T", " ").replace(/\.\d+Z$/, " UTC");
    return { ok: false, problem: `This token expired at ${when}. ${FRESH_TOKEN_HINT}` };
  }
  return { ok: true };
}
