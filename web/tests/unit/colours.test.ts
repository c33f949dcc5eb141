// @vitest-environment node
/**
 * Every type of the contract has a badge of its own, and every badge (and the balance card's expiry
 * line) is readable: at least 4.5:1 (WCAG AA for small text) with the colours app/globals.css defines.
 */
import { readFileSync } from "node:fs";
import { fileURLToPath } from "node:url";

import { describe, expect, it } from "vitest";

import { TYPE_LABELS } from "@/billing/format";

const read = (path: string) => readFileSync(fileURLToPath(new URL(`../../${path}`, import.meta.url)), "utf8");
const globals = read("app/globals.css");
const billing = read("src/billing/billing.module.css");
const schema = read("src/api/schema.d.ts");

/** The transaction types of the contract, from the generated schema, not from the page's own list. */
function contractTypes(): string[] {
  const match = /\bTransactionType:\s*([^;]+);/.exec(schema);
  if (!match) throw new Error("src/api/schema.d.ts defines no TransactionType");
  return match[1]!.split("|").map((member) => JSON.parse(member.trim()) as string);
}

function variable(name: string): string {
  const match = new RegExp(`--${name}:\\s*(#[0-9a-fA-F]{6})\\s*;`).exec(globals);
  if (!match) throw new Error(`app/globals.css defines no --${name}`);
  return match[1]!;
}

/** The declarations of `.selector { … }` in billing.module.css, as property -> value. */
function rule(selector: string): Record<string, string> {
  const match = new RegExp(`(?:^|\\n)\\.${selector}\\s*\\{([^}]*)\\}`).exec(billing);
  if (!match) throw new Error(`billing.module.css has no .${selector}`);
  return Object.fromEntries(
    match[1]!
      .split(";")
      .map((declaration) => declaration.split(":").map((part) => part.trim()))
      .filter((parts): parts is [string, string] => parts.length === 2 && Boolean(parts[0])),
  );
}

function colour(value: string | undefined): string {
  const match = /^var\(--([\w-]+)\)$/.exec(value ?? "");
  if (!match) throw new Error(`not a colour variable: ${value}`);
  return variable(match[1]!);
}

function luminance(hex: string): number {
  const [r, g, b] = [1, 3, 5].map((start) => {
    const channel = parseInt(hex.slice(start, start + 2), 16) / 255;
    return channel <= 0.03928 ? channel / 12.92 : ((channel + 0.055) / 1.055) ** 2.4;
  });
  return 0.2126 * r! + 0.7152 * g! + 0.0722 * b!;
}

function contrast(a: string, b: string): number {
  const [light, dark] = [luminance(a), luminance(b)].sort((x, y) => y - x);
  return (light! + 0.05) / (dark! + 0.05);
}

describe("the type badges", () => {
  const types = contractTypes();

  it("cover every type of the contract, refunds, reversals and adjustments included", () => {
    expect(types).toEqual(expect.arrayContaining(["purchase", "usage", "grant", "refund", "reversal", "adjustment", "expiration"]));
    expect(Object.keys(TYPE_LABELS).sort()).toEqual([...types].sort());
  });

  it.each(types)("%s has its own readable colours", (type) => {
    const badge = rule(`type_${type}`);
    expect(contrast(colour(badge.color), colour(badge.background))).toBeGreaterThanOrEqual(4.5);
  });

  it("differ from one another", () => {
    const pairs = types.map((type) => {
      const badge = rule(`type_${type}`);
      return `${colour(badge.background)}/${colour(badge.color)}`;
    });
    expect(new Set(pairs).size).toBe(types.length);
  });
});

describe("the balance card's expiry line", () => {
  it("is readable on the card", () => {
    expect(contrast(colour(rule("expiry").color), variable("surface"))).toBeGreaterThanOrEqual(4.5);
  });
});
