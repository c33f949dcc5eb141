import { fileURLToPath } from "node:url";

import { defineConfig } from "vitest/config";

// Component and unit tests in jsdom. The browser tests have their own config
// (vitest.e2e.config.ts) because they build and serve the page.
export default defineConfig({
  resolve: {
    alias: { "@": fileURLToPath(new URL("./src", import.meta.url)) },
  },
  test: {
    environment: "jsdom",
    include: ["tests/unit/**/*.test.{ts,tsx}"],
    setupFiles: ["tests/unit/setup.ts"],
    env: { TZ: "UTC" },
  },
});
