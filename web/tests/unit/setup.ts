import "@testing-library/jest-dom/vitest";

import { cleanup } from "@testing-library/react";
import { afterEach } from "vitest";

afterEach(() => {
  if (typeof window === "undefined") return; // tests in the node environment
  cleanup();
  window.sessionStorage.clear();
});
