/**
 * Where the billing page gets the signed-in user's token: `getAccessToken()` is
 * the one function that knows. Replace its body with the product's identity
 * provider (Auth.js, Supabase, Clerk: see docs/billing-page.md); nothing
 * else in the page reads tokens.
 *
 * This development implementation uses a token pasted on /dev/sign-in (kept in
 * sessionStorage for this tab) or else the one inlined at build time from
 * NEXT_PUBLIC_DEV_TOKEN (which `make web` sets to a fresh demo-user token).
 */

/** Where the pasted token is kept (sessionStorage). */
export const DEV_TOKEN_KEY = "transactions.devAccessToken";

/** Where the page sends a user whose session is missing or has expired. */
export const SIGN_IN_PATH = "/dev/sign-in";

/** The bearer token for the transactions service, or null when nobody is signed in. */
export async function getAccessToken(): Promise<string | null> {
  return readPastedToken() ?? (process.env.NEXT_PUBLIC_DEV_TOKEN || null);
}

/** Development sign-in: keep a pasted token for this tab (null signs out). */
export function setDevAccessToken(token: string | null): void {
  if (token) window.sessionStorage.setItem(DEV_TOKEN_KEY, token);
  else window.sessionStorage.removeItem(DEV_TOKEN_KEY);
}

function readPastedToken(): string | null {
  if (typeof window === "undefined") return null;
  try {
    return window.sessionStorage.getItem(DEV_TOKEN_KEY) || null;
  } catch {
    // Storage can be disabled by the browser; fall back to the build's token.
    return null;
  }
}
