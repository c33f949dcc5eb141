import { afterEach, describe, expect, it, vi } from "vitest";

import { getAccessToken, setDevAccessToken } from "@/auth/access-token";

describe("getAccessToken (development implementation)", () => {
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  it("is null when no token was pasted or built in", async () => {
    vi.stubEnv("NEXT_PUBLIC_DEV_TOKEN", "");
    expect(await getAccessToken()).toBeNull();
  });

  it("uses the token built into the page", async () => {
    vi.stubEnv("NEXT_PUBLIC_DEV_TOKEN", "built-in");
    expect(await getAccessToken()).toBe("built-in");
  });

  it("prefers a token pasted on the sign-in page, until it is forgotten", async () => {
    vi.stubEnv("NEXT_PUBLIC_DEV_TOKEN", "built-in");
    setDevAccessToken("pasted");
    expect(await getAccessToken()).toBe("pasted");
    setDevAccessToken(null);
    expect(await getAccessToken()).toBe("built-in");
  });
});
