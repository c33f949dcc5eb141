/**
 * The billing page in a real browser (Debian's Chromium, driven by
 * playwright-core) against the real service on a real PostgreSQL: a user with
 * 45 transactions of every type and status, recorded through the HTTP API, and
 * a user with the three months of demo history that `make run` seeds.
 */
import { mkdirSync, readFileSync } from "node:fs";
import { join } from "node:path";
import { randomUUID } from "node:crypto";

import { chromium, type Browser, type BrowserContext, type Page } from "playwright-core";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

import type {
  Balance,
  BalanceAt,
  Statement,
  Transaction,
  TransactionDetail,
  TransactionPage,
  UsageSummary,
} from "../../src/api/client";
import { DEV_TOKEN_KEY } from "../../src/auth/access-token";

import { signToken, startStack, WEB_ROOT, type Stack } from "./stack";

const CHROMIUM = "/usr/bin/chromium";
const ARTIFACTS = join(WEB_ROOT, "test-artifacts");
const ZONE = "America/New_York";
const BUY_CREDITS_URL = "https://pay.example/credits";
const MINUS = "\u2212";

interface Kind {
  type: "purchase" | "usage" | "grant" | "refund" | "expiration";
  amount: string;
  credits: number;
  status: "completed" | "pending" | "failed";
  description: string;
  /** The caller's own key-value pairs; a usage names its model, or not. */
  metadata?: Record<string, string>;
  // what the page must show, written out by hand rather than computed by the page's formatters
  creditsText: string;
  amountText: string;
  typeText: string;
  statusText: string;
}

// Nine kinds, five times over, oldest first: every type with every status,
// thousands separators, cents, and usage with and without an amount.
const KINDS: Kind[] = [
  { type: "purchase", amount: "49.00", credits: 5000, status: "completed", description: "Studio pack: 5,000 credits",
    creditsText: "+5,000", amountText: "$49.00", typeText: "Purchase", statusText: "Completed" },
  { type: "usage", amount: "0", credits: -20, status: "completed", description: "Image generation (1024x1024)",
    metadata: { model: "gpt-image-1" }, creditsText: `${MINUS}20`, amountText: "\u2014", typeText: "Usage", statusText: "Completed" },
  { type: "usage", amount: "0", credits: -35, status: "pending", description: "Video generation, 5 s",
    metadata: { model: "veo-3" },
    // the moment the reservation lapses is added when the row is recorded (see expectedRow)
    creditsText: `${MINUS}35`, amountText: "\u2014", typeText: "Usage", statusText: "Reserved, not yet charged" },
  { type: "purchase", amount: "19.99", credits: 1200, status: "failed", description: "Creator pack: 1,200 credits",
    creditsText: "+1,200", amountText: "$19.99", typeText: "Purchase", statusText: "Failed" },
  { type: "purchase", amount: "1234.56", credits: 150000, status: "pending", description: "Team plan: 150,000 credits",
    creditsText: "+150,000", amountText: "$1,234.56", typeText: "Purchase", statusText: "Pending" },
  { type: "usage", amount: "0", credits: -8, status: "failed", description: "Text generation, 4k tokens",
    metadata: { model: "gpt-4o" }, creditsText: `${MINUS}8`, amountText: "\u2014", typeText: "Usage", statusText: "Failed" },
  { type: "purchase", amount: "4.50", credits: 250, status: "completed", description: "Top-up: 250 credits",
    creditsText: "+250", amountText: "$4.50", typeText: "Purchase", statusText: "Completed" },
  { type: "usage", amount: "0.25", credits: -1000, status: "completed", description: "Batch upscale, 40 images",
    creditsText: `${MINUS}1,000`, amountText: "$0.25", typeText: "Usage", statusText: "Completed" },
  { type: "usage", amount: "0", credits: -50, status: "completed", description: "Upscale 4x",
    metadata: { model: "esrgan-4x" }, creditsText: `${MINUS}50`, amountText: "\u2014", typeText: "Usage", statusText: "Completed" },
];

interface Recorded extends Kind {
  id: string;
  createdAt: string;
  /** While a usage is pending: when its reservation lapses. */
  holdExpiresAt?: string | null;
}

const USER_ID = randomUUID();
/** A user with the demo history of `make run`: 90 days, a few generations a day on four models. */
const DEMO_USER = randomUUID();
const DEMO_MODELS = ["image-fast", "image-large", "text-4k", "video-5s"];
const recorded: Recorded[] = []; // oldest first, as recorded
let newestFirst: Recorded[] = [];
let stack: (Stack & { userToken: string; serviceToken: string }) | undefined;
let browser: Browser | undefined;

async function seed(apiUrl: string, serviceToken: string) {
  const headers = { Authorization: `Bearer ${serviceToken}`, "Content-Type": "application/json" };
  const registered = await fetch(`${apiUrl}/api/users/${USER_ID}`, { method: "PUT", headers });
  expect(registered.status).toBe(201);
  // One at a time: the order of recording is the order the history must show (reversed).
  for (let index = 0; index < 45; index += 1) {
    const kind = KINDS[index % KINDS.length]!;
    const response = await fetch(`${apiUrl}/api/transactions`, {
      method: "POST",
      headers: { ...headers, "Idempotency-Key": `billing-e2e-${USER_ID}-${index}` },
      body: JSON.stringify({
        user_id: USER_ID,
        type: kind.type,
        amount: kind.amount,
        credits: kind.credits,
        description: kind.description,
        status: kind.status,
        ...(kind.metadata && { metadata: kind.metadata, reference: `gen-${index}` }),
      }),
    });
    const body = (await response.json()) as { id: string; created_at: string; hold_expires_at: string | null };
    expect(response.status, JSON.stringify(body)).toBe(201);
    recorded.push({ ...kind, id: body.id, createdAt: body.created_at, holdExpiresAt: body.hold_expires_at });
  }
  newestFirst = [...recorded].reverse();
}

async function apiGet<T>(path: string, token = stack!.userToken): Promise<{ status: number; body: T }> {
  const response = await fetch(`${stack!.apiUrl}${path}`, { headers: { Authorization: `Bearer ${token}` } });
  return { status: response.status, body: (await response.json()) as T };
}

/** A write through the HTTP API with the seeding service's key, as the service's callers make it. */
async function serviceWrite(method: "PUT" | "POST", path: string, body?: object, idempotencyKey?: string) {
  const response = await fetch(`${stack!.apiUrl}${path}`, {
    method,
    headers: {
      Authorization: `Bearer ${stack!.serviceToken}`,
      "Content-Type": "application/json",
      ...(idempotencyKey ? { "Idempotency-Key": idempotencyKey } : {}),
    },
    ...(body ? { body: JSON.stringify(body) } : {}),
  });
  const text = await response.text();
  return {
    status: response.status,
    text,
    body: (text ? JSON.parse(text) : null) as { id: string; created_at: string; refunds?: string | null },
  };
}

async function newPage(viewport = { width: 1280, height: 900 }): Promise<{ context: BrowserContext; page: Page }> {
  const context = await browser!.newContext({ viewport, locale: "en-US", timezoneId: ZONE });
  const page = await context.newPage();
  return { context, page };
}

function rows(page: Page) {
  return page.getByTestId("transaction-row");
}

/** Each shown row as the user reads it. */
async function readRows(page: Page) {
  return rows(page).evaluateAll((elements) =>
    elements.map((row) => {
      const cells = Array.from(row.querySelectorAll("td")).map((cell) => cell.textContent?.trim() ?? "");
      const time = row.querySelector("time");
      return {
        id: row.getAttribute("data-id"),
        date: cells[0],
        type: cells[1],
        description: cells[2],
        credits: cells[3],
        amount: cells[4],
        status: cells[5],
        utc: time?.getAttribute("title"),
        datetime: time?.getAttribute("datetime"),
      };
    }),
  );
}

/** A moment as the page shows it to a viewer in ZONE ("Jun 12, 2025, 5:30 AM"), spaces normalised. */
function shownMoment(iso: string) {
  return new Intl.DateTimeFormat("en-US", { dateStyle: "medium", timeStyle: "short", timeZone: ZONE })
    .format(new Date(iso))
    .replace(/[\u202f\u00a0]/g, " ");
}

function expectedRow(transaction: Recorded) {
  const [day, clock] = transaction.createdAt.replace("Z", "").split("T");
  return {
    id: transaction.id,
    date: shownMoment(transaction.createdAt),
    type: transaction.typeText,
    description: transaction.description,
    credits: transaction.creditsText,
    amount: transaction.amountText,
    status: transaction.holdExpiresAt
      ? `${transaction.statusText}, lapses ${shownMoment(transaction.holdExpiresAt)}`
      : transaction.statusText,
    utc: `${day} ${clock} UTC`,
    datetime: transaction.createdAt,
  };
}

/** The balance card in its error state: still on the page, saying why, with no numbers. */
async function expectBalanceUnavailable(page: Page, reason: string) {
  const card = page.getByTestId("balance-card");
  expect(await card.count()).toBe(1);
  expect(await card.getByRole("heading", { name: "Available credits" }).isVisible()).toBe(true);
  expect(await card.getByTestId("balance-error").textContent()).toContain("Balance unavailable");
  expect(await card.getByTestId("balance-error-message").textContent()).toBe(reason);
  expect(await card.getByTestId("balance-available").count()).toBe(0);
  expect(await card.getByTestId("balance-total").count()).toBe(0);
  expect(await card.getByTestId("balance-held").count()).toBe(0);
  expect(await card.getByTestId("balance-promotional").count()).toBe(0);
  expect(await card.getByTestId("balance-next-expiry").count()).toBe(0);
}

function normaliseSpaces<T extends { date?: string; status?: string }>(row: T): T {
  return { ...row, date: row.date?.replace(/[\u202f\u00a0]/g, " "), status: row.status?.replace(/[\u202f\u00a0]/g, " ") };
}

/** Every row GET /api/transactions pages through for `query`, following the cursor. */
async function allRows(query: string, token = stack!.userToken): Promise<Transaction[]> {
  const rows: Transaction[] = [];
  let cursor: string | null = null;
  do {
    const { status, body }: { status: number; body: TransactionPage } = await apiGet<TransactionPage>(
      `/api/transactions?${query}&limit=100${cursor ? `&cursor=${encodeURIComponent(cursor)}` : ""}`,
      token,
    );
    expect(status).toBe(200);
    rows.push(...body.data);
    cursor = body.has_more ? body.next_cursor : null;
  } while (cursor);
  return rows;
}

/** RFC 4180: fields in double quotes may hold commas, line breaks and doubled quotes. */
function parseCsv(text: string): Record<string, string>[] {
  const records: string[][] = [];
  let record: string[] = [];
  let field = "";
  let quoted = false;
  for (let index = 0; index < text.length; index += 1) {
    const char = text[index]!;
    if (quoted) {
      if (char === '"' && text[index + 1] === '"') {
        field += '"';
        index += 1;
      } else if (char === '"') {
        quoted = false;
      } else {
        field += char;
      }
    } else if (char === '"') {
      quoted = true;
    } else if (char === ",") {
      record.push(field);
      field = "";
    } else if (char === "\n" || char === "\r") {
      if (char === "\r" && text[index + 1] === "\n") index += 1;
      record.push(field);
      records.push(record);
      record = [];
      field = "";
    } else {
      field += char;
    }
  }
  if (field || record.length) records.push([...record, field]);
  const [header, ...rows] = records;
  return rows.map((row) => Object.fromEntries(header!.map((name, column) => [name, row[column] ?? ""])));
}

/** The chart's bars as drawn: what each counts, and whether it has a height on screen. */
async function readBars(page: Page) {
  const bars = await page.getByTestId("usage-bar").evaluateAll((elements) =>
    elements.map((bar) => ({
      start: bar.getAttribute("data-start") ?? "",
      series: bar.getAttribute("data-series") ?? "",
      credits: Number(bar.getAttribute("data-credits")),
      height: bar.getBoundingClientRect().height,
    })),
  );
  return bars
    .filter((bar) => bar.credits !== 0)
    .sort((a, b) => a.start.localeCompare(b.start) || a.series.localeCompare(b.series));
}

/** The bars a summary asks for: one per series with credits, or one per bucket without a split by model. */
function expectedBars(summary: UsageSummary) {
  const names = summary.series.map((entry) =>
    entry.kind === "value" ? entry.name : entry.kind === "other" ? "Other models" : "No model",
  );
  const stacked = summary.series.some((entry) => entry.kind === "value");
  return summary.buckets
    .flatMap((bucket) =>
      stacked
        ? bucket.split.map((credits, index) => ({ start: bucket.start, series: names[index]!, credits }))
        : [{ start: bucket.start, series: "Credits", credits: bucket.credits }],
    )
    .filter((bar) => bar.credits !== 0)
    .sort((a, b) => a.start.localeCompare(b.start) || a.series.localeCompare(b.series));
}

/** The chart as drawn and its table for screen readers say what `summary` says, bar by bar and bucket by bucket. */
async function expectChartToShow(page: Page, summary: UsageSummary) {
  const usage = page.getByTestId("usage");
  const expected = expectedBars(summary);
  expect(expected.length).toBeGreaterThan(0);
  await expect
    .poll(async () => (await readBars(page)).map(({ start, series, credits }) => ({ start, series, credits })))
    .toEqual(expected);
  // every bar with credits is drawn with a height of its own
  expect((await readBars(page)).every((bar) => bar.height > 0)).toBe(true);
  const table = await usage.getByTestId("usage-row").evaluateAll((rows) =>
    rows.map((row) => ({
      start: row.getAttribute("data-start"),
      credits: row.lastElementChild?.textContent?.replace(/,/g, ""),
    })),
  );
  expect(table).toEqual(summary.buckets.map((bucket) => ({ start: bucket.start, credits: String(bucket.credits) })));
  expect(await usage.getByTestId("usage-total").textContent()).toContain(summary.total.toLocaleString("en-US"));
}

/**
 * For each of the chart's periods (30 days, 12 weeks, 12 months): pick it, read `GET /api/usage/summary` for
 * the same user, zone and split, check that it names exactly `models` and that the chart and its table show
 * it, then run `more` on it.
 */
async function forEachPeriod(
  page: Page,
  { zone, token, models }: { zone: string; token?: string; models: string[] },
  more: (granularity: UsageSummary["granularity"], summary: UsageSummary) => Promise<void>,
) {
  const usage = page.getByTestId("usage");
  const periods = [
    ["30 days", "day"],
    ["12 weeks", "week"],
    ["12 months", "month"],
  ] as const;
  for (const [label, granularity] of periods) {
    await usage.getByRole("button", { name: label }).click();
    const { status, body: summary } = await apiGet<UsageSummary>(
      `/api/usage/summary?granularity=${granularity}&group_by=metadata.model&tz=${encodeURIComponent(zone)}`,
      token,
    );
    expect(status).toBe(200);
    expect(summary.series.filter((entry) => entry.kind === "value").map((entry) => entry.name).sort()).toEqual(models);
    await expectChartToShow(page, summary);
    await more(granularity, summary);
  }
}

/** This tab signs in as `token`'s user on every load (the page prefers a pasted token to the built-in one). */
async function signInAs(context: BrowserContext, token: string) {
  await context.addInitScript(
    ([key, value]) => {
      try {
        window.sessionStorage.setItem(key!, value!);
      } catch {
        // a document without storage of its own (about:blank): nothing to sign in
      }
    },
    [DEV_TOKEN_KEY, token],
  );
}

/** One part of the page on its own, for the docs. */
async function screenshotOf(page: Page, testId: string, name: string) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.getByTestId(testId).screenshot({ path: join(ARTIFACTS, name) });
}

async function screenshot(page: Page, name: string, fullPage = false) {
  mkdirSync(ARTIFACTS, { recursive: true });
  await page.screenshot({ path: join(ARTIFACTS, name), fullPage });
}

/** The page from its top down to `height`, at the viewport's width. */
async function screenshotTop(page: Page, name: string, height: number) {
  mkdirSync(ARTIFACTS, { recursive: true });
  const width = page.viewportSize()!.width;
  await page.screenshot({ path: join(ARTIFACTS, name), fullPage: true, clip: { x: 0, y: 0, width, height } });
}

describe("the billing page in Chromium, on the real service", () => {
  beforeAll(async () => {
    stack = await startStack({ userId: USER_ID, seed, buyCreditsUrl: BUY_CREDITS_URL, demoUserIds: [DEMO_USER] });
    browser = await chromium.launch({
      executablePath: CHROMIUM,
      headless: true,
      // playwright-core starts the browser with a fresh temporary user-data-dir of its own.
      args: [
        "--headless",
        "--no-sandbox",
        "--disable-gpu",
        "--no-first-run",
        "--disable-background-networking",
        "--disable-component-update",
        "--disable-sync",
        "--disable-dev-shm-usage",
      ],
    });
  });

  afterAll(async () => {
    try {
      await browser?.close();
    } finally {
      await stack?.stop();
    }
  });

  it("recorded 45 transactions, which the service lists newest first", async () => {
    const { status, body } = await apiGet<{ data: { id: string }[]; has_more: boolean }>(
      `/api/transactions?limit=100`,
    );
    expect(status).toBe(200);
    expect(body.has_more).toBe(false);
    expect(body.data.map((row) => row.id)).toEqual(newestFirst.map((row) => row.id));
  });

  it("shows the newest 20 with the right dates, types, descriptions, signs, amounts and statuses", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);

      const shown = (await readRows(page)).map(normaliseSpaces);
      expect(shown).toEqual(newestFirst.slice(0, 20).map(expectedRow));
      await expect.poll(() => page.getByRole("button", { name: "Load more" }).isVisible()).toBe(true);

      // signed credits are coloured: credits in and out differ in colour, and failed ones are struck through
      const colours = await page.evaluate(() => {
        const cell = (text: string) =>
          Array.from(document.querySelectorAll<HTMLElement>('[data-testid="credits"]')).find(
            (element) => element.textContent === text,
          )!;
        const style = (text: string) => getComputedStyle(cell(text));
        return {
          credit: style("+5,000").color,
          debit: style("\u221220").color,
          failed: style("+1,200").textDecorationLine,
        };
      });
      expect(colours.credit).not.toBe(colours.debit);
      expect(colours.failed).toBe("line-through");

      await screenshot(page, "billing-desktop.png");
      await screenshot(page, "billing-desktop-full.png", true);
    } finally {
      await context.close();
    }
  });

  it('"Load more" twice shows all 45 exactly once, in order, and then goes away', async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);
      await page.getByRole("button", { name: "Load more" }).click();
      await expect.poll(() => rows(page).count()).toBe(40);
      await page.getByRole("button", { name: "Load more" }).click();
      await expect.poll(() => rows(page).count()).toBe(45);

      const shown = (await readRows(page)).map(normaliseSpaces);
      expect(shown).toEqual(newestFirst.map(expectedRow));
      expect(new Set(shown.map((row) => row.id)).size).toBe(45);
      expect(await page.getByRole("button", { name: /Load more|Loading/ }).count()).toBe(0);
    } finally {
      await context.close();
    }
  });

  it("shows the balance that GET /api/balance returns", async () => {
    const { status, body } = await apiGet<Balance>("/api/balance");
    expect(status).toBe(200);
    // the ledger as seeded: per round of nine, +5,000 +250 −20 −1,000 −50 completed, and 35 held
    expect(body).toMatchObject({ balance: 20_900, held: 175, available: 20_725 });
    // purchases only: every available credit is paid, and none expires
    expect(body).toMatchObject({ paid: 20_725, promotional: 0, next_expiry: null });

    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => page.getByTestId("balance-available").textContent()).toBe("20,725");
      expect(await page.getByTestId("balance-total").textContent()).toBe(body.balance.toLocaleString("en-US"));
      expect(await page.getByTestId("balance-held").textContent()).toBe(body.held.toLocaleString("en-US"));
      expect(await page.getByTestId("balance-available").textContent()).toBe(body.available.toLocaleString("en-US"));
      // so the card shows no paid/promotional split and no expiry
      expect(await page.getByTestId("balance-promotional").count()).toBe(0);
      expect(await page.getByTestId("balance-next-expiry").count()).toBe(0);
    } finally {
      await context.close();
    }
  });

  it("shows a grant, its expiry and the expiration once it lapses", async () => {
    // A user of its own, so that the 45 rows and the balances the other tests check stay as they are.
    const userId = randomUUID();
    const token = signToken(stack!.secret, userId, 3600);
    const grantExpiresIn = 5; // seconds: long enough to load the page once, short enough to wait for
    expect((await serviceWrite("PUT", `/api/users/${userId}`)).status).toBe(201);
    const purchaseKind: Kind = {
      type: "purchase", amount: "9.99", credits: 1000, status: "completed", description: "Starter pack: 1,000 credits",
      creditsText: "+1,000", amountText: "$9.99", typeText: "Purchase", statusText: "Completed",
    };
    const purchase = await serviceWrite(
      "POST",
      "/api/transactions",
      { user_id: userId, type: "purchase", amount: "9.99", credits: 1000, description: purchaseKind.description },
      `billing-e2e-${userId}-purchase`,
    );
    expect(purchase.status, purchase.text).toBe(201);

    const { context, page } = await newPage();
    try {
      await signInAs(context, token);
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => page.getByTestId("balance-available").textContent()).toBe("1,000");
      expect(await rows(page).count()).toBe(1);
      // only paid credits, none expiring: no split, no expiry line
      expect(await page.getByTestId("balance-promotional").count()).toBe(0);
      expect(await page.getByTestId("balance-next-expiry").count()).toBe(0);

      // 100 free (promotional) credits that lapse in a few seconds
      const grantKind: Kind = {
        type: "grant", amount: "0.00", credits: 100, status: "completed", description: "Welcome bonus: 100 credits",
        creditsText: "+100", amountText: "\u2014", typeText: "Free credits", statusText: "Completed",
      };
      const grant = await serviceWrite(
        "POST",
        "/api/transactions",
        {
          user_id: userId,
          type: "grant",
          amount: "0.00",
          credits: 100,
          description: grantKind.description,
          expires_in: grantExpiresIn,
        },
        `billing-e2e-${userId}-grant`,
      );
      expect(grant.status, grant.text).toBe(201);
      const granted = await apiGet<Balance>("/api/balance", token);
      expect(granted.status).toBe(200);
      expect(granted.body).toMatchObject({ balance: 1100, held: 0, available: 1100, paid: 1000, promotional: 100 });
      expect(granted.body.next_expiry?.credits).toBe(100);
      const expiresAt = granted.body.next_expiry!.expires_at;

      // (If this page load took longer than the grant lives, the card would rightly show 1,000 here.)
      await page.reload();
      await expect.poll(() => page.getByTestId("balance-available").textContent()).toBe("1,100");
      expect(await page.getByTestId("balance-paid").textContent()).toBe("1,000");
      expect(await page.getByTestId("balance-promotional").textContent()).toBe("100");
      const expiry = page.getByTestId("balance-next-expiry");
      expect((await expiry.textContent())?.replace(/[\u202f\u00a0]/g, " ")).toBe(
        `100 credits expire on ${shownMoment(expiresAt)}`,
      );
      expect(await expiry.locator("time").getAttribute("datetime")).toBe(expiresAt);
      await expect.poll(() => rows(page).count()).toBe(2);
      const purchaseRow = expectedRow({ ...purchaseKind, id: purchase.body.id, createdAt: purchase.body.created_at });
      const grantRow = expectedRow({ ...grantKind, id: grant.body.id, createdAt: grant.body.created_at });
      expect((await readRows(page)).map(normaliseSpaces)).toEqual([grantRow, purchaseRow]);
      await screenshot(page, "billing-grant-expiring.png");

      // Once the grant has lapsed, reads count its credits as gone at once, recorded or not.
      await expect
        .poll(async () => (await apiGet<Balance>("/api/balance", token)).body, { timeout: 20_000 })
        .toMatchObject({ available: 1000, paid: 1000, promotional: 0, next_expiry: null });
      await page.reload();
      await expect.poll(() => page.getByTestId("balance-available").textContent()).toBe("1,000");
      expect(await page.getByTestId("balance-promotional").count()).toBe(0);
      expect(await page.getByTestId("balance-next-expiry").count()).toBe(0);

      // The user's next write records the expiry as an entry of its own.
      const usageKind: Kind = {
        type: "usage", amount: "0", credits: -10, status: "completed", description: "Image generation (512x512)",
        creditsText: `${MINUS}10`, amountText: "\u2014", typeText: "Usage", statusText: "Completed",
      };
      const usage = await serviceWrite(
        "POST",
        "/api/transactions",
        { user_id: userId, type: "usage", amount: "0", credits: -10, description: usageKind.description },
        `billing-e2e-${userId}-usage`,
      );
      expect(usage.status, usage.text).toBe(201);
      const expirations = await apiGet<{ data: { id: string; created_at: string; credits: number; amount: string; description: string }[] }>(
        "/api/transactions?type=expiration",
        token,
      );
      expect(expirations.status).toBe(200);
      expect(expirations.body.data).toHaveLength(1);
      const expired = expirations.body.data[0]!;
      expect(expired).toMatchObject({ credits: -100, amount: "0.00", description: "100 promotional credits expired" });
      const expirationRow = expectedRow({
        type: "expiration", amount: expired.amount, credits: expired.credits, status: "completed",
        description: expired.description, creditsText: `${MINUS}100`, amountText: "\u2014", typeText: "Expired",
        statusText: "Completed", id: expired.id, createdAt: expired.created_at,
      });
      const usageRow = expectedRow({ ...usageKind, id: usage.body.id, createdAt: usage.body.created_at });

      await page.reload();
      await expect.poll(() => rows(page).count()).toBe(4);
      const shown = (await readRows(page)).map(normaliseSpaces);
      // The expiration is recorded at the moment of the write that found it, so the two may share a
      // timestamp: either may come first.
      const byId = (a: { id: string | null }, b: { id: string | null }) => String(a.id).localeCompare(String(b.id));
      expect(shown.slice(0, 2).sort(byId)).toEqual([expirationRow, usageRow].sort(byId));
      expect(shown.slice(2)).toEqual([grantRow, purchaseRow]);
      // no promotional credits left, nothing expiring
      expect(await page.getByTestId("balance-available").textContent()).toBe("990");
      expect(await page.getByTestId("balance-total").textContent()).toBe("990");
      expect(await page.getByTestId("balance-promotional").count()).toBe(0);
      expect(await page.getByTestId("balance-next-expiry").count()).toBe(0);

      // credits in and out by their sign: the grant like the purchase, the expiration like the usage;
      // and each type a badge of its own
      const looks = await page.evaluate(
        (ids) => {
          const row = (id: string) => document.querySelector<HTMLElement>(`[data-testid="transaction-row"][data-id="${id}"]`)!;
          const credits = (id: string) => getComputedStyle(row(id).querySelector('[data-testid="credits"]')!).color;
          const badge = (id: string) => getComputedStyle(row(id).querySelectorAll("td")[1]!.firstElementChild!).backgroundColor;
          return {
            credits: ids.map(credits),
            badges: ids.map(badge),
          };
        },
        [purchase.body.id, grant.body.id, usage.body.id, expired.id],
      );
      const [purchaseColour, grantColour, usageColour, expirationColour] = looks.credits;
      expect(grantColour).toBe(purchaseColour);
      expect(expirationColour).toBe(usageColour);
      expect(grantColour).not.toBe(expirationColour);
      expect(new Set(looks.badges).size).toBe(4);
      await screenshot(page, "billing-grant-expired.png");

      // and the history filters by the new types
      await page.getByLabel("Type").selectOption("expiration");
      await expect.poll(() => new URL(page.url()).search).toBe("?type=expiration");
      await expect.poll(async () => (await readRows(page)).map((row) => row.id)).toEqual([expired.id]);
      await page.getByLabel("Type").selectOption("grant");
      await expect.poll(() => new URL(page.url()).search).toBe("?type=grant");
      await expect.poll(async () => (await readRows(page)).map((row) => row.id)).toEqual([grant.body.id]);
    } finally {
      await context.close();
    }
  });

  it("shows a refund of part of a purchase, with the dollars it gave back", async () => {
    // A user of its own, like the grant's, so that the 45 rows and their balances stay as they are.
    const userId = randomUUID();
    const token = signToken(stack!.secret, userId, 3600);
    expect((await serviceWrite("PUT", `/api/users/${userId}`)).status).toBe(201);
    const purchaseKind: Kind = {
      type: "purchase", amount: "9.99", credits: 1000, status: "completed", description: "Starter pack: 1,000 credits",
      creditsText: "+1,000", amountText: "$9.99", typeText: "Purchase", statusText: "Completed",
    };
    const purchase = await serviceWrite(
      "POST",
      "/api/transactions",
      { user_id: userId, type: "purchase", amount: "9.99", credits: 1000, description: purchaseKind.description },
      `billing-e2e-${userId}-purchase`,
    );
    expect(purchase.status, purchase.text).toBe(201);
    // A quarter of the credits, and $2.50 of the $9.99, back through the payment provider.
    const refundKind: Kind = {
      type: "refund", amount: "2.50", credits: -250, status: "completed", description: "Refund: Starter pack (partial)",
      creditsText: `${MINUS}250`, amountText: "$2.50", typeText: "Refund", statusText: "Completed",
    };
    const refund = await serviceWrite(
      "POST",
      "/api/transactions",
      { user_id: userId, type: "refund", refunds: purchase.body.id, amount: "2.50", credits: -250, description: refundKind.description },
      `billing-e2e-${userId}-refund`,
    );
    expect(refund.status, refund.text).toBe(201);
    expect(refund.body.refunds).toBe(purchase.body.id);

    const { context, page } = await newPage();
    try {
      await signInAs(context, token);
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => page.getByTestId("balance-available").textContent()).toBe("750");
      expect(await page.getByTestId("balance-total").textContent()).toBe("750");
      await expect.poll(() => rows(page).count()).toBe(2);
      const refundRow = expectedRow({ ...refundKind, id: refund.body.id, createdAt: refund.body.created_at });
      const purchaseRow = expectedRow({ ...purchaseKind, id: purchase.body.id, createdAt: purchase.body.created_at });
      expect((await readRows(page)).map(normaliseSpaces)).toEqual([refundRow, purchaseRow]);

      // credits out (like usage), and a badge unlike the purchase's
      const looks = await page.evaluate(
        (ids) => {
          const row = (id: string) => document.querySelector<HTMLElement>(`[data-testid="transaction-row"][data-id="${id}"]`)!;
          return ids.map((id) => ({
            credits: getComputedStyle(row(id).querySelector('[data-testid="credits"]')!).color,
            badge: getComputedStyle(row(id).querySelectorAll("td")[1]!.firstElementChild!).backgroundColor,
          }));
        },
        [refund.body.id, purchase.body.id],
      );
      expect(looks[0]!.credits).not.toBe(looks[1]!.credits);
      expect(looks[0]!.badge).not.toBe(looks[1]!.badge);
      await screenshot(page, "billing-refund.png");

      // and the history filters by refunds
      await page.getByLabel("Type").selectOption("refund");
      await expect.poll(() => new URL(page.url()).search).toBe("?type=refund");
      await expect.poll(async () => (await readRows(page)).map((row) => row.id)).toEqual([refund.body.id]);
    } finally {
      await context.close();
    }
  });

  it("draws the usage chart from GET /api/usage/summary, per day, week and month, stacked by model", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      const usage = page.getByTestId("usage");
      await expect.poll(() => usage.getByTestId("usage-total").isVisible()).toBe(true);

      // the bars, and the table for screen readers, bucket by bucket
      await forEachPeriod(page, { zone: ZONE, models: ["esrgan-4x", "gpt-image-1"] }, async (granularity, summary) => {
        // completed usage only, five rounds of 20 + 1,000 + 50: pending holds and failed usage spend nothing
        expect(summary.total).toBe(5_350);
        if (granularity === "day") await screenshotOf(page, "usage", "billing-chart.png");
      });

      await usage.getByRole("button", { name: "Show as table" }).click();
      await expect.poll(() => usage.getByTestId("usage-table").isVisible()).toBe(true);
      expect(await usage.getByTestId("usage-chart").count()).toBe(0);
      await screenshotOf(page, "usage", "billing-chart-table.png");
    } finally {
      await context.close();
    }
  });

  it("downloads a CSV of the filtered history with the same rows as GET /api/transactions", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing?type=usage&status=completed`);
      await expect.poll(() => rows(page).count()).toBe(15);

      const [download] = await Promise.all([
        page.waitForEvent("download"),
        page.getByRole("button", { name: "Download CSV" }).click(),
      ]);
      const file = parseCsv(readFileSync(await download.path(), "utf8"));
      const listed = await allRows("type=usage&status=completed");
      expect(listed).toHaveLength(15);
      expect(file.map((row) => [row.id, Number(row.credits), row.type, row.status])).toEqual(
        listed.map((row) => [row.id, row.credits, row.type, row.status]),
      );

      // under the name the service gives the file
      const direct = await fetch(`${stack!.apiUrl}/api/transactions/export?format=csv&type=usage&status=completed`, {
        headers: { Authorization: `Bearer ${stack!.userToken}` },
      });
      expect(direct.status).toBe(200);
      const name = /filename="([^"]+)"/.exec(direct.headers.get("Content-Disposition") ?? "")?.[1];
      expect(name).toMatch(new RegExp(`^transactions-${USER_ID}-\\d{4}-\\d{2}-\\d{2}\\.csv$`));
      expect(download.suggestedFilename()).toBe(name);

      // and all 45 without a filter
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);
      const [everything] = await Promise.all([
        page.waitForEvent("download"),
        page.getByRole("button", { name: "Download CSV" }).click(),
      ]);
      const all = parseCsv(readFileSync(await everything.path(), "utf8"));
      expect(all.map((row) => row.id)).toEqual((await allRows("")).map((row) => row.id));
      expect(all).toHaveLength(45);
    } finally {
      await context.close();
    }
  });

  it("shows the month's statement, which closes on GET /api/balance?at= its end, or now", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      const section = page.getByTestId("statement");
      const month = page.getByLabel("Month");
      await expect.poll(() => section.getByTestId("statement-closing").isVisible()).toBe(true);

      // the month under way: closing so far, on the balance now
      const current = await month.inputValue();
      const { body: open } = await apiGet<Statement>(`/api/statements?month=${current}&tz=${encodeURIComponent(ZONE)}`);
      expect(open.final).toBe(false);
      const now = await apiGet<BalanceAt>(`/api/balance?at=${encodeURIComponent(new Date().toISOString())}`);
      expect(now.status).toBe(200);
      expect(open.closing_balance).toBe(now.body.balance);
      expect(await section.getByTestId("statement-closing").textContent()).toBe(
        `Closing balance so far${now.body.balance.toLocaleString("en-US")}`,
      );
      // each line that is not zero, as the service sums it
      const lines = await section.getByTestId("statement-line").evaluateAll((elements) =>
        elements.map((line) => [line.getAttribute("data-line"), line.lastElementChild?.textContent]),
      );
      const signed = (credits: number) =>
        `${credits > 0 ? "+" : MINUS}${Math.abs(credits).toLocaleString("en-US")}`;
      const statementLines = ["purchases", "grants", "usage", "refunds", "reversals", "adjustments", "expirations", "carried_in"] as const;
      expect(lines).toEqual(
        statementLines.filter((line) => open[line] !== 0).map((line) => [line, signed(open[line])]),
      );
      expect(lines.map(([line]) => line)).toEqual(expect.arrayContaining(["purchases", "usage"]));
      await screenshotOf(page, "statement", "billing-statement.png");

      // last month, over: closing on the balance at its end (the user had none then)
      const previous = await month.locator("option").nth(1).getAttribute("value");
      await month.selectOption(previous!);
      const { body: closed } = await apiGet<Statement>(`/api/statements?month=${previous}&tz=${encodeURIComponent(ZONE)}`);
      expect(closed.final).toBe(true);
      const atEnd = await apiGet<BalanceAt>(`/api/balance?at=${encodeURIComponent(closed.ends_at)}`);
      expect(atEnd.status).toBe(200);
      expect(closed.closing_balance).toBe(atEnd.body.balance);
      await expect
        .poll(() => section.getByTestId("statement-closing").textContent())
        .toBe(`Closing balance${atEnd.body.balance.toLocaleString("en-US")}`);
    } finally {
      await context.close();
    }
  });

  it("shows the demo user's three months: a bar most days, stacked by model, and last month's statement", async () => {
    const token = signToken(stack!.secret, DEMO_USER, 3600);
    const { context, page } = await newPage();
    try {
      await signInAs(context, token);
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);
      const zone = await page.evaluate(() => Intl.DateTimeFormat().resolvedOptions().timeZone);
      expect(zone).toBe(ZONE);
      const usage = page.getByTestId("usage");
      await expect.poll(() => usage.getByTestId("usage-total").isVisible()).toBe(true);

      await forEachPeriod(page, { zone, token, models: DEMO_MODELS }, async (granularity) => {
        // stacked by the demo's models, each in the legend
        const drawn = new Set((await readBars(page)).map((bar) => bar.series));
        expect([...drawn].sort()).toEqual(DEMO_MODELS);
        const legend = await usage.locator("ul li").allTextContents();
        expect(legend).toEqual(expect.arrayContaining(DEMO_MODELS));
        if (granularity === "day") {
          // a history written day by day, not all at once: most of the 30 days have a bar
          expect(new Set((await readBars(page)).map((bar) => bar.start)).size).toBeGreaterThanOrEqual(20);
        }
      });
      // back to the 30 days for the screenshots
      await usage.getByRole("button", { name: "30 days" }).click();
      await expect.poll(async () => new Set((await readBars(page)).map((bar) => bar.start)).size).toBeGreaterThanOrEqual(20);

      // last month, picked in the month picker: over, and closing on the balance at its end
      const section = page.getByTestId("statement");
      const month = page.getByLabel("Month");
      await expect.poll(() => section.getByTestId("statement-closing").isVisible()).toBe(true);
      const current = await month.inputValue();
      const [year, monthNumber] = current.split("-").map(Number) as [number, number];
      const previous = monthNumber === 1 ? `${year - 1}-12` : `${year}-${String(monthNumber - 1).padStart(2, "0")}`;
      expect(await month.locator("option").nth(1).getAttribute("value")).toBe(previous);
      await month.selectOption(previous);
      const { status, body: closed } = await apiGet<Statement>(
        `/api/statements?month=${previous}&tz=${encodeURIComponent(zone)}`,
        token,
      );
      expect(status).toBe(200);
      expect(closed.final).toBe(true);
      // the demo used credits all month
      expect(closed.usage).toBeLessThan(0);
      const atEnd = await apiGet<BalanceAt>(`/api/balance?at=${encodeURIComponent(closed.ends_at)}`, token);
      expect(atEnd.status).toBe(200);
      expect(atEnd.body.balance).toBeGreaterThan(0);
      expect(closed.closing_balance).toBe(atEnd.body.balance);
      await expect
        .poll(() => section.getByTestId("statement-closing").textContent())
        .toBe(`Closing balance${atEnd.body.balance.toLocaleString("en-US")}`);

      // for the docs, with last month's statement beside the chart: the top of the page, and the whole page on a phone
      await screenshotTop(page, "billing-demo.png", 1400);
      await page.setViewportSize({ width: 375, height: 812 });
      await expect.poll(() => page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(375);
      await expect.poll(async () => (await readBars(page)).every((bar) => bar.height > 0)).toBe(true);
      await screenshot(page, "billing-demo-phone.png", true);
    } finally {
      await context.close();
    }
  });

  it("opens a row to the metadata, reference and postings GET /api/transactions/{id} has", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);
      // the newest completed usage that names its model
      const usage = newestFirst.find((row) => row.type === "usage" && row.status === "completed" && row.metadata)!;
      const { status, body: detail } = await apiGet<TransactionDetail>(`/api/transactions/${usage.id}`);
      expect(status).toBe(200);
      expect(detail.metadata).toEqual(usage.metadata);
      expect(detail.postings.length).toBeGreaterThan(0);

      const row = page.locator(`[data-testid="transaction-row"][data-id="${usage.id}"]`);
      const toggle = row.getByRole("button", { name: `Details of ${usage.description}` });
      expect(await toggle.getAttribute("aria-expanded")).toBe("false");
      await toggle.focus();
      await page.keyboard.press("Enter");
      expect(await toggle.getAttribute("aria-expanded")).toBe("true");

      const details = page.locator(`[data-testid="details-row"][data-details-for="${usage.id}"]`);
      await expect.poll(() => details.getByTestId("details-postings").isVisible()).toBe(true);
      expect(await details.getByTestId("details-reference").textContent()).toBe(detail.reference);
      const metadata = await details.getByTestId("details-metadata").locator("div").evaluateAll((entries) =>
        entries.map((entry) => [entry.querySelector("dt")?.textContent, entry.querySelector("dd")?.textContent]),
      );
      expect(Object.fromEntries(metadata)).toEqual(detail.metadata);
      const postings = await details.getByTestId("posting").evaluateAll((entries) =>
        entries.map((entry) => Array.from(entry.querySelectorAll("td")).map((cell) => cell.textContent)),
      );
      expect(postings.map(([lot, credits, held]) => [lot, credits, held])).toEqual(
        detail.postings.map((posting) => [
          posting.lot_id,
          posting.credits === 0 ? "0" : `${posting.credits > 0 ? "+" : MINUS}${Math.abs(posting.credits).toLocaleString("en-US")}`,
          posting.held === 0 ? "0" : `${posting.held > 0 ? "+" : MINUS}${Math.abs(posting.held).toLocaleString("en-US")}`,
        ]),
      );
      await details.scrollIntoViewIfNeeded();
      await screenshot(page, "billing-details.png");

      // on a phone the open row stays inside the screen
      await page.setViewportSize({ width: 375, height: 812 });
      await details.scrollIntoViewIfNeeded();
      expect(await page.evaluate(() => document.documentElement.scrollWidth)).toBeLessThanOrEqual(375);
      await screenshot(page, "billing-details-phone.png");
      await page.setViewportSize({ width: 1280, height: 900 });

      await page.keyboard.press("Enter");
      expect(await toggle.getAttribute("aria-expanded")).toBe("false");
      expect(await details.count()).toBe(0);
    } finally {
      await context.close();
    }
  });

  it("shows skeletons while the reads are on their way", async () => {
    const { context, page } = await newPage();
    try {
      // hold every answer of the service until the skeletons have been seen
      let release!: () => void;
      const held = new Promise<void>((resolve) => (release = resolve));
      await page.route(`${stack!.apiUrl}/**`, async (route) => {
        await held;
        await route.continue();
      });
      await page.goto(`${stack!.webUrl}/billing`);
      for (const testId of ["balance-loading", "history-loading", "usage-loading", "statement-loading"]) {
        await expect.poll(() => page.getByTestId(testId).isVisible()).toBe(true);
      }
      expect(await rows(page).count()).toBe(0);
      await screenshot(page, "billing-loading.png");

      release();
      await expect.poll(() => rows(page).count()).toBe(20);
      for (const testId of ["balance-loading", "history-loading", "usage-loading", "statement-loading"]) {
        expect(await page.getByTestId(testId).count()).toBe(0);
      }
    } finally {
      await context.close();
    }
  });

  it("points a user without transactions to buying credits", async () => {
    const userId = randomUUID();
    const token = signToken(stack!.secret, userId, 3600);
    expect((await serviceWrite("PUT", `/api/users/${userId}`)).status).toBe(201);
    const { context, page } = await newPage();
    try {
      await signInAs(context, token);
      await page.goto(`${stack!.webUrl}/billing`);
      const empty = page.getByTestId("history-empty");
      await expect.poll(() => empty.isVisible()).toBe(true);
      expect(await empty.textContent()).toContain("No transactions yet");
      expect(await empty.getByRole("link", { name: "Buy credits" }).getAttribute("href")).toBe(BUY_CREDITS_URL);
      expect(await page.getByTestId("balance-card").getByRole("link", { name: "Buy credits" }).getAttribute("href")).toBe(
        BUY_CREDITS_URL,
      );
      await expect.poll(() => page.getByTestId("usage-empty").isVisible()).toBe(true);
      await expect.poll(() => page.getByTestId("statement-quiet").isVisible()).toBe(true);
      await screenshot(page, "billing-empty.png");
      await page.setViewportSize({ width: 375, height: 812 });
      await screenshot(page, "billing-empty-phone.png", true);
    } finally {
      await context.close();
    }
  });

  it("filters by type through the URL, and a filtered link survives a reload", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);

      await page.getByLabel("Type").selectOption("usage");
      await expect.poll(() => new URL(page.url()).search).toBe("?type=usage");
      const usage = newestFirst.filter((row) => row.type === "usage");
      await expect.poll(async () => (await readRows(page)).map((row) => row.id)).toEqual(
        usage.slice(0, 20).map((row) => row.id),
      );
      expect(new Set((await readRows(page)).map((row) => row.type))).toEqual(new Set(["Usage"]));

      await page.reload();
      await expect.poll(() => rows(page).count()).toBe(20);
      expect(new Set((await readRows(page)).map((row) => row.type))).toEqual(new Set(["Usage"]));
      expect(await page.getByLabel("Type").inputValue()).toBe("usage");

      // a linked view with both filters
      await page.goto(`${stack!.webUrl}/billing?type=purchase&status=pending`);
      const pendingPurchases = newestFirst.filter((row) => row.type === "purchase" && row.status === "pending");
      expect(pendingPurchases).toHaveLength(5);
      await expect.poll(async () => (await readRows(page)).map((row) => row.id)).toEqual(
        pendingPurchases.map((row) => row.id),
      );
      expect(await page.getByRole("button", { name: "Load more" }).count()).toBe(0);

      // and back to everything
      await page.getByRole("button", { name: "Clear filters" }).click();
      await expect.poll(() => new URL(page.url()).search).toBe("");
      await expect.poll(() => rows(page).count()).toBe(20);
    } finally {
      await context.close();
    }
  });

  it("is usable with the keyboard alone", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);
      // through the chart's periods, the statement's month, the filters, the download and each row's
      // Details, to Load more
      const reached: string[] = [];
      for (let step = 0; step < 60; step += 1) {
        await page.keyboard.press("Tab");
        reached.push(
          await page.evaluate(() => {
            const element = document.activeElement as HTMLElement | null;
            return `${element?.tagName.toLowerCase()}:${element?.getAttribute("aria-label") ?? element?.textContent?.trim().slice(0, 20)}`;
          }),
        );
        if (reached.at(-1) === "button:Load more") break;
      }
      expect(reached).toContain("button:Load more");
      expect(reached.some((entry) => entry.startsWith("select:"))).toBe(true);
      expect(reached).toContain("button:30 days");
      expect(reached).toContain("button:Download CSV");
      expect(reached.filter((entry) => entry.startsWith("button:Details of"))).toHaveLength(20);
      await page.keyboard.press("Enter");
      await expect.poll(() => rows(page).count()).toBe(40);
    } finally {
      await context.close();
    }
  });

  it("fits a 375 px wide phone without sideways scrolling", async () => {
    const { context, page } = await newPage({ width: 375, height: 812 });
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);
      const widths = await page.evaluate(() => ({
        page: document.documentElement.scrollWidth,
        viewport: window.innerWidth,
      }));
      expect(widths.page).toBeLessThanOrEqual(widths.viewport);
      // every value of the newest row is on screen
      const first = rows(page).first();
      for (const text of Object.values(expectedRow(newestFirst[0]!)).slice(2, 7)) {
        await expect.poll(() => first.getByText(text, { exact: true }).isVisible()).toBe(true);
      }
      await screenshot(page, "billing-mobile.png");
      await screenshot(page, "billing-mobile-full.png", true);
      await screenshot(page, "billing-phone.png", true);
    } finally {
      await context.close();
    }
  });

  it("shows the session state for an expired token, and the rows after signing in again", async () => {
    const expired = signToken(stack!.secret, USER_ID, -3600);
    expect((await apiGet("/api/balance", expired)).status).toBe(401);

    const { context, page } = await newPage();
    try {
      // The sign-in page says so at once when the pasted token has expired already...
      await page.goto(`${stack!.webUrl}/dev/sign-in`);
      await page.getByLabel("Access token").fill(expired);
      await page.getByRole("button", { name: "Sign in" }).click();
      await expect.poll(() => page.getByTestId("sign-in-problem").textContent()).toContain("This token expired at");
      expect(new URL(page.url()).pathname).toBe("/dev/sign-in");

      // ...and the billing page shows the session state when a session expires while it is kept.
      await page.evaluate(([key, token]) => window.sessionStorage.setItem(key!, token!), [DEV_TOKEN_KEY, expired]);
      await page.goto(`${stack!.webUrl}/billing`);

      const session = page.getByTestId("session-expired");
      await expect.poll(() => session.textContent()).toContain("Your session has expired — sign in again");
      expect(await rows(page).count()).toBe(0);
      await expectBalanceUnavailable(page, "Your session has expired — sign in again");
      await screenshot(page, "billing-session-expired.png");

      await session.getByRole("link", { name: "Sign in again" }).click();
      await page.waitForURL("**/dev/sign-in?next=*");
      await page.getByLabel("Access token").fill(stack!.userToken);
      await page.getByRole("button", { name: "Sign in" }).click();
      await page.waitForURL("**/billing");
      await expect.poll(() => rows(page).count()).toBe(20);
      await expect.poll(() => page.getByTestId("balance-available").isVisible()).toBe(true);
      expect(await page.getByTestId("balance-error").count()).toBe(0);
    } finally {
      await context.close();
    }
  });

  it("shows the error state while the service is down, and the rows after Retry once it is back", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);

      await stack!.api.stop();
      await page.reload();
      const error = page.getByTestId("billing-error");
      await expect.poll(() => error.isVisible()).toBe(true);
      expect(await error.textContent()).toContain("The billing service could not be reached.");
      expect(await rows(page).count()).toBe(0);
      // the balance card stays in its place and says the same
      await expectBalanceUnavailable(page, "The billing service could not be reached.");
      await screenshot(page, "billing-service-down.png");

      // and on a phone it keeps its frame, inside the screen, above the history's error
      await page.setViewportSize({ width: 375, height: 812 });
      const phone = await page.evaluate(() => {
        const box = (testId: string) => document.querySelector(`[data-testid="${testId}"]`)!.getBoundingClientRect();
        const card = box("balance-card");
        const message = box("balance-error");
        return {
          page: document.documentElement.scrollWidth,
          viewport: window.innerWidth,
          cardRight: card.right,
          messageInside: message.left >= card.left && message.right <= card.right && message.bottom <= card.bottom,
          cardAboveError: card.bottom <= box("billing-error").top,
        };
      });
      expect(phone.page).toBeLessThanOrEqual(phone.viewport);
      expect(phone.cardRight).toBeLessThanOrEqual(phone.viewport);
      expect(phone.messageInside).toBe(true);
      expect(phone.cardAboveError).toBe(true);
      await screenshot(page, "billing-service-down-mobile.png");
      await page.setViewportSize({ width: 1280, height: 900 });

      await stack!.api.start();
      await error.getByRole("button", { name: "Retry" }).click();
      await expect.poll(() => rows(page).count()).toBe(20);
      expect(await page.getByTestId("billing-error").count()).toBe(0);
      await expect.poll(() => page.getByTestId("balance-available").isVisible()).toBe(true);
      expect(await page.getByTestId("balance-error").count()).toBe(0);
    } finally {
      await context.close();
    }
  });

  it("shows the problem's title when the service answers 503, and the rows after Retry", async () => {
    const { context, page } = await newPage();
    try {
      await page.goto(`${stack!.webUrl}/billing`);
      await expect.poll(() => rows(page).count()).toBe(20);

      await stack!.stopDatabase();
      expect((await apiGet("/api/balance")).status).toBe(503);
      await page.reload();
      const error = page.getByTestId("billing-error");
      await expect.poll(() => error.isVisible()).toBe(true);
      expect(await page.getByTestId("billing-error-message").textContent()).toBe("Database unavailable");
      await expectBalanceUnavailable(page, "Database unavailable");

      await stack!.startDatabase();
      await error.getByRole("button", { name: "Retry" }).click();
      await expect.poll(() => rows(page).count()).toBe(20);
      await expect.poll(() => page.getByTestId("balance-available").isVisible()).toBe(true);
      expect(await page.getByTestId("balance-error").count()).toBe(0);
    } finally {
      await context.close();
    }
  });
});

