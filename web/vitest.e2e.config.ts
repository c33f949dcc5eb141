import { defineConfig } from "vitest/config";

// The browser tests: one file that builds and serves the page against the real
// service, so nothing runs in parallel and the hooks may take a while.
export default defineConfig({
  test: {
    environment: "node",
    include: ["tests/e2e/**/*.e2e.ts"],
    fileParallelism: false,
    hookTimeout: 240_000,
    testTimeout: 60_000,
    // how long expect.poll waits for the page to show something (a bound, not a speed check)
    expect: { poll: { timeout: 20_000, interval: 100 } },
  },
});
