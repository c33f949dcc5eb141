// @vitest-environment node
/**
 * The page's types are generated from the service's contract. This fails
 * when ../openapi.yaml changed and `npm run gen:api` was not run, so the page
 * and the service cannot drift apart unnoticed.
 */
import { execFileSync } from "node:child_process";
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { fileURLToPath } from "node:url";

import { expect, it } from "vitest";

const web = fileURLToPath(new URL("../..", import.meta.url));
const cli = join(web, "node_modules", "openapi-typescript", "bin", "cli.js");

it("src/api/schema.d.ts is what `npm run gen:api` makes from ../openapi.yaml", () => {
  const scratch = mkdtempSync(join(tmpdir(), "schema-"));
  try {
    const fresh = join(scratch, "schema.d.ts");
    execFileSync(process.execPath, [cli, "../openapi.yaml", "--output", fresh], { cwd: web, stdio: "pipe" });
    const generated = readFileSync(fresh, "utf8");
    const committed = readFileSync(join(web, "src", "api", "schema.d.ts"), "utf8");

    expect(generated).toContain('"/api/transactions"');
    expect(generated).toContain("TransactionPage");
    expect(committed, "src/api/schema.d.ts is out of date with openapi.yaml: run `npm run gen:api` in web/").toBe(
      generated,
    );
  } finally {
    rmSync(scratch, { recursive: true, force: true });
  }
});
