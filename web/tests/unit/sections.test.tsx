import { act, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, beforeEach, describe, expect, it, vi } from "vitest";

import type { Transaction } from "@/api/client";
import { Billing } from "@/billing/Billing";
import { exportName } from "@/billing/DownloadCsv";
import { StatementSection } from "@/billing/StatementSection";
import { chartOf, UsageSection } from "@/billing/UsageSection";

import {
  balance,
  csvOf,
  deferred,
  detailOf,
  fakeService,
  history,
  json,
  ledger,
  problem,
  statement,
  TOKEN,
  USER_ID,
  usageSummary,
  type Answer,
} from "./fake-service";
import { renderWithQueries } from "./render";

const MINUS = "\u2212";
const MODELS = [
  { name: "gpt-4o", kind: "value" as const },
  { name: "other", kind: "other" as const },
  { name: "none", kind: "none" as const },
];

/** The rows of one of a table's sections ("tbody", "thead", "tfoot"), each as its cells' texts. */
function rowTexts(table: HTMLElement, section = "tbody") {
  return Array.from(table.querySelectorAll(`:scope > ${section} > tr`)).map((row) =>
    Array.from(row.querySelectorAll("th, td")).map((cell) => cell.textContent),
  );
}

describe("the usage chart", () => {
  function renderUsage(answer: Answer) {
    const service = fakeService(answer);
    renderWithQueries(<UsageSection api={service.api} />);
    return service;
  }

  it("shows a skeleton, then the credits per day of the last 30 days, split by model, as a table too", async () => {
    const gate = deferred<void>();
    const summary = usageSummary("day", { 28: [30, 0, 0], 29: [10, 0, 2] }, { series: MODELS });
    const { calls } = renderUsage(async () => {
      await gate.promise;
      return json(summary);
    });

    expect(screen.getByTestId("usage-loading")).toBeInTheDocument();
    expect(screen.getByText("Loading your usage…")).toBeInTheDocument();
    await act(async () => gate.resolve());

    expect(await screen.findByTestId("usage-total")).toHaveTextContent("42 credits used in the last 30 days");
    expect(calls[0]?.query).toEqual({ granularity: "day", group_by: "metadata.model", tz: "UTC" });
    expect(calls[0]?.authorization).toBe(`Bearer ${TOKEN}`);

    const table = screen.getByTestId("usage-table");
    // other models spent nothing: no column (nor colour) of zeros for them
    expect(rowTexts(table, "thead")).toEqual([["Day", "gpt-4o", "No model", "Credits"]]);
    const rows = rowTexts(table);
    expect(rows).toHaveLength(30);
    expect(rows[0]).toEqual(["Nov 2, 2026", "0", "0", "0"]);
    expect(rows.slice(-2)).toEqual([
      ["Nov 30, 2026", "30", "0", "30"],
      ["Dec 1, 2026", "10", "2", "12"],
    ]);
    expect(rowTexts(table, "tfoot")).toEqual([["Total", "40", "2", "42"]]);
    // for a screen reader: there, but not on screen until asked for
    expect(table.parentElement!.className).toMatch(/visuallyHidden/);
    expect(screen.getByTestId("usage-chart")).toBeInTheDocument();
  });

  it("switches to 12 weeks and to 12 months", async () => {
    const user = userEvent.setup();
    const { calls } = renderUsage(({ query }) =>
      json(usageSummary(query.granularity as "day" | "week" | "month", { 11: [5, 1, 0] }, { series: MODELS })),
    );
    await screen.findByTestId("usage-total");
    expect(screen.getByRole("button", { name: "30 days" })).toHaveAttribute("aria-pressed", "true");

    await user.click(screen.getByRole("button", { name: "12 weeks" }));
    await waitFor(() => expect(screen.getByTestId("usage-total")).toHaveTextContent("6 credits used in the last 12 weeks"));
    expect(screen.getByRole("button", { name: "12 weeks" })).toHaveAttribute("aria-pressed", "true");
    expect(screen.getByRole("button", { name: "30 days" })).toHaveAttribute("aria-pressed", "false");
    let rows = rowTexts(screen.getByTestId("usage-table"));
    expect(rows).toHaveLength(12);
    expect(rows.at(-1)).toEqual(["Week of Nov 30, 2026", "5", "1", "6"]);

    await user.click(screen.getByRole("button", { name: "12 months" }));
    await waitFor(() => expect(screen.getByTestId("usage-total")).toHaveTextContent("used in the last 12 months"));
    rows = rowTexts(screen.getByTestId("usage-table"));
    expect(rows.map((row) => row[0])).toEqual([
      "January 2026", "February 2026", "March 2026", "April 2026", "May 2026", "June 2026",
      "July 2026", "August 2026", "September 2026", "October 2026", "November 2026", "December 2026",
    ]);
    expect(calls.map((call) => call.query.granularity)).toEqual(["day", "week", "month"]);
  });

  it("shows one column of credits when no usage names a model", async () => {
    renderUsage(() => json(usageSummary("day", { 29: [7] }, { series: [{ name: "none", kind: "none" }] })));
    const table = await screen.findByTestId("usage-table");
    expect(rowTexts(table, "thead")).toEqual([["Day", "Credits"]]);
    expect(rowTexts(table).at(-1)).toEqual(["Dec 1, 2026", "7"]);
  });

  it("says so when no credits were used, with no table of zeros", async () => {
    renderUsage(() => json(usageSummary("day", {}, { series: [] })));
    expect(await screen.findByTestId("usage-empty")).toHaveTextContent("No credits used in the last 30 days.");
    expect(screen.queryByTestId("usage-table")).not.toBeInTheDocument();
    expect(screen.queryByRole("button", { name: "Show as table" })).not.toBeInTheDocument();
  });

  it("shows the table on screen on request, in place of the chart", async () => {
    const user = userEvent.setup();
    renderUsage(() => json(usageSummary("day", { 29: [3, 0, 0] }, { series: MODELS })));
    const toggle = await screen.findByRole("button", { name: "Show as table" });
    expect(toggle).toHaveAttribute("aria-expanded", "false");

    await user.click(toggle);
    expect(toggle).toHaveAttribute("aria-expanded", "true");
    expect(toggle).toHaveTextContent("Show as chart");
    expect(screen.getByTestId("usage-table").parentElement!.className).not.toMatch(/visuallyHidden/);
    expect(screen.queryByTestId("usage-chart")).not.toBeInTheDocument();
    expect(toggle.getAttribute("aria-controls")).toBe(screen.getByTestId("usage-table").parentElement!.id);
  });

  it("reports a failure in its own place, and loads on Retry", async () => {
    const user = userEvent.setup();
    let down = true;
    renderUsage(() =>
      down ? problem(503, "Database unavailable", "database_unavailable") : json(usageSummary("day", { 29: [4, 0, 0] }, { series: MODELS })),
    );
    expect(await screen.findByTestId("usage-error")).toHaveTextContent("Couldn’t load your usage: Database unavailable");
    down = false;
    await user.click(screen.getByRole("button", { name: "Retry" }));
    expect(await screen.findByTestId("usage-total")).toHaveTextContent("4 credits");
    expect(screen.queryByTestId("usage-error")).not.toBeInTheDocument();
  });

  it("stacks the bars by series only when some usage names a model", () => {
    const stacked = chartOf(usageSummary("day", { 29: [3, 1, 2] }, { series: MODELS }));
    expect(stacked.series.map((entry) => entry.name)).toEqual(["gpt-4o", "Other models", "No model"]);
    expect(stacked.rows.at(-1)).toMatchObject({ start: "2026-12-01", credits: 6, s0: 3, s1: 1, s2: 2 });
    expect(new Set(stacked.series.map((entry) => entry.colour)).size).toBe(3);

    const single = chartOf(usageSummary("day", { 29: [0, 5] }, { series: MODELS.slice(1) }));
    expect(single.series.map((entry) => entry.key)).toEqual(["credits"]);
    expect(single.rows.at(-1)).toEqual({ start: "2026-12-01", credits: 5 });

    // a model whose usage was all given back spends nothing: no split either
    const givenBack = chartOf(usageSummary("day", { 29: [0, 0, 4] }, { series: MODELS }));
    expect(givenBack.series.map((entry) => entry.key)).toEqual(["credits"]);
  });
});

describe("the statement", () => {
  const now = new Date("2026-12-15T12:00:00Z");

  function renderStatement(answer: Answer) {
    const service = fakeService(answer);
    renderWithQueries(<StatementSection api={service.api} now={now} />);
    return service;
  }

  it("offers the last 12 months, the current one first, and shows the current one", async () => {
    const { calls } = renderStatement(({ query }) => json(statement(query.month!, { final: false })));
    const select = screen.getByRole("combobox", { name: "Month" });
    const options = within(select).getAllByRole("option");
    expect(options).toHaveLength(12);
    expect(options.map((option) => option.getAttribute("value"))).toEqual([
      "2026-12", "2026-11", "2026-10", "2026-09", "2026-08", "2026-07",
      "2026-06", "2026-05", "2026-04", "2026-03", "2026-02", "2026-01",
    ]);
    expect(options[0]).toHaveTextContent("December 2026");
    expect(select).toHaveValue("2026-12");
    expect(screen.getByTestId("statement-loading")).toBeInTheDocument();
    await screen.findByTestId("statement-table");
    expect(calls[0]?.query).toEqual({ month: "2026-12", tz: "UTC" });
  });

  it("shows the opening balance, each line that changed it and the closing balance", async () => {
    renderStatement(({ query }) =>
      json(
        statement(query.month!, {
          opening_balance: 120, purchases: 1000, grants: 50, usage: -640, reversals: 12, expirations: -30,
          closing_held: 8, amount_paid: "10.00",
        }),
      ),
    );
    const table = await screen.findByTestId("statement-table");
    expect(rowTexts(table)).toEqual([
      ["Opening balance", "120"],
      ["Purchases", "+1,000"],
      ["Free credits", "+50"],
      ["Usage", `${MINUS}640`],
      ["Credits returned", "+12"],
      ["Expired credits", `${MINUS}30`],
    ]);
    expect(rowTexts(table, "tfoot")).toEqual([
      ["Closing balance", "512"],
      ["of which held", "8"],
    ]);
    expect(screen.getByTestId("statement-money")).toHaveTextContent("Paid $10.00");
    expect(screen.queryByText(/so far/)).not.toBeInTheDocument();
  });

  it("says the month under way is so far, and a quiet month that nothing happened", async () => {
    renderStatement(({ query }) => json(statement(query.month!, { opening_balance: 75, final: false })));
    const table = await screen.findByTestId("statement-table");
    expect(rowTexts(table, "tfoot")).toEqual([["Closing balance so far", "75"]]);
    expect(screen.getByTestId("statement-quiet")).toHaveTextContent("No credits came in or went out this month.");
    expect(screen.getByText("The month is not over yet: the closing balance is the balance now.")).toBeInTheDocument();
    expect(screen.queryByTestId("statement-money")).not.toBeInTheDocument();
  });

  it("asks for the month picked", async () => {
    const user = userEvent.setup();
    const { calls } = renderStatement(({ query }) =>
      json(statement(query.month!, { opening_balance: query.month === "2026-11" ? 9 : 1 })),
    );
    await screen.findByTestId("statement-table");
    await user.selectOptions(screen.getByRole("combobox", { name: "Month" }), "2026-11");
    await waitFor(() => expect(screen.getByTestId("statement-opening")).toHaveTextContent("9"));
    expect(calls.map((call) => call.query.month)).toEqual(["2026-12", "2026-11"]);
  });

  it("reports a failure in its own place", async () => {
    renderStatement(() => problem(422, "Validation failed", "validation_error"));
    expect(await screen.findByTestId("statement-error")).toHaveTextContent("Couldn’t load the statement: Validation failed");
  });
});

describe("the CSV download", () => {
  let saved: { href: string; download: string }[] = [];
  const created: Blob[] = [];

  beforeEach(() => {
    saved = [];
    created.length = 0;
    URL.createObjectURL = vi.fn((blob: Blob) => {
      created.push(blob);
      return `blob:billing/${created.length}`;
    });
    URL.revokeObjectURL = vi.fn();
    vi.spyOn(HTMLAnchorElement.prototype, "click").mockImplementation(function (this: HTMLAnchorElement) {
      saved.push({ href: this.href, download: this.download });
    });
  });

  afterEach(() => {
    vi.restoreAllMocks();
  });

  it("downloads the filtered history under the service's file name, with the user's token", async () => {
    const user = userEvent.setup();
    const rows = history(12);
    const { api, calls } = fakeService(ledger(rows));
    renderWithQueries(<Billing api={api} filters={{ type: "usage", status: "pending" }} onFiltersChange={() => {}} />);

    await user.click(await screen.findByRole("button", { name: "Download CSV" }));

    await waitFor(() => expect(saved).toHaveLength(1));
    const exported = calls.find((call) => call.path === "/api/transactions/export")!;
    expect(exported.query).toEqual({ format: "csv", type: "usage", status: "pending" });
    expect(exported.authorization).toBe(`Bearer ${TOKEN}`);
    expect(saved[0]).toEqual({ href: "blob:billing/1", download: `transactions-${USER_ID}-2026-12-01.csv` });
    const pendingUsage = rows.filter((row) => row.type === "usage" && row.status === "pending");
    expect((await created[0]!.text()).split("\r\n").filter(Boolean)).toHaveLength(1 + pendingUsage.length);
  });

  it("is disabled while the file is on its way", async () => {
    const user = userEvent.setup();
    const gate = deferred<void>();
    const answer = ledger(history(3));
    const { api, calls } = fakeService(async (call) => {
      if (call.path === "/api/transactions/export") await gate.promise;
      return answer(call);
    });
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    await user.click(await screen.findByRole("button", { name: "Download CSV" }));
    const busy = screen.getByRole("button", { name: "Preparing CSV…" });
    expect(busy).toBeDisabled();
    await user.click(busy);
    expect(calls.filter((call) => call.path === "/api/transactions/export")).toHaveLength(1);

    await act(async () => gate.resolve());
    await waitFor(() => expect(screen.getByRole("button", { name: "Download CSV" })).toBeEnabled());
    expect(saved).toHaveLength(1);
  });

  it("shows the problem's title when the service refuses the export", async () => {
    const user = userEvent.setup();
    const { api } = fakeService(
      ledger(history(3), balance(10), (call) =>
        call.path === "/api/transactions/export" ? problem(422, "Export too large", "export_too_large") : undefined,
      ),
    );
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    await user.click(await screen.findByRole("button", { name: "Download CSV" }));
    expect(await screen.findByTestId("download-error")).toHaveTextContent("Couldn’t download the CSV: Export too large");
    expect(saved).toHaveLength(0);
    expect(screen.getByRole("button", { name: "Download CSV" })).toBeEnabled();
  });

  it("names the file as the service does when the browser hides the service's Content-Disposition", async () => {
    const user = userEvent.setup();
    const { api } = fakeService(
      ledger(history(3), balance(10), (call) => {
        if (call.path !== "/api/transactions/export") return undefined;
        const file = csvOf([]);
        file.headers.delete("Content-Disposition"); // not in Access-Control-Expose-Headers
        return file;
      }),
    );
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    await user.click(await screen.findByRole("button", { name: "Download CSV" }));
    await waitFor(() => expect(saved).toHaveLength(1));
    expect(saved[0]!.download).toBe(exportName(USER_ID));
    expect(exportName(USER_ID, new Date("2026-12-01T23:30:00Z"))).toBe(`transactions-${USER_ID}-2026-12-01.csv`);
  });
});

describe("buying credits", () => {
  afterEach(() => {
    vi.unstubAllEnvs();
  });

  it("links the card and the empty history to NEXT_PUBLIC_BUY_CREDITS_URL", async () => {
    vi.stubEnv("NEXT_PUBLIC_BUY_CREDITS_URL", "https://pay.example/credits");
    const { api } = fakeService(ledger([], balance(0)));
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    await screen.findByText("No transactions yet");
    const card = screen.getByTestId("balance-card");
    expect(within(card).getByRole("link", { name: "Buy credits" })).toHaveAttribute("href", "https://pay.example/credits");
    expect(within(screen.getByTestId("history-empty")).getByRole("link", { name: "Buy credits" })).toHaveAttribute(
      "href",
      "https://pay.example/credits",
    );
  });

  it("offers no button when the product has no checkout URL", async () => {
    vi.stubEnv("NEXT_PUBLIC_BUY_CREDITS_URL", "");
    const { api } = fakeService(ledger([], balance(0)));
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    await screen.findByText("No transactions yet");
    expect(screen.queryByRole("link", { name: "Buy credits" })).not.toBeInTheDocument();
    expect(screen.getByText(/Buy credits to get started/)).toBeInTheDocument();
  });
});

describe("a pending usage", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("says its credits are reserved, not yet charged, and when the reservation lapses, or lapsed", async () => {
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(new Date("2025-06-12T10:00:00Z"));
    const base = history(1)[0]!;
    const rows: Transaction[] = [
      { ...base, id: "01975c70-0000-7000-8000-000000000002", type: "usage", status: "pending", credits: -20, amount: "0.00",
        hold_expires_at: "2025-06-12T10:30:00.000000Z" },
      { ...base, id: "01975c70-0000-7000-8000-000000000001", type: "usage", status: "pending", credits: -5, amount: "0.00",
        hold_expires_at: "2025-06-12T09:45:00.000000Z" },
      { ...base, id: "01975c70-0000-7000-8000-000000000000", type: "purchase", status: "pending", credits: 500, amount: "9.99",
        hold_expires_at: null },
    ];
    const { api } = fakeService(ledger(rows));
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    await waitFor(() => expect(screen.getAllByTestId("transaction-row")).toHaveLength(3));
    const status = screen.getAllByTestId("transaction-row").map((row) => within(row).getAllByRole("cell")[5]!.textContent);
    expect(status).toEqual([
      "Reserved, not yet charged, lapses Jun 12, 2025, 10:30 AM",
      "Reserved, not yet charged, lapsed Jun 12, 2025, 9:45 AM",
      // a pending purchase waits for its payment: no reservation to explain
      "Pending",
    ]);
  });
});

describe("a row's details", () => {
  const usage: Transaction = {
    ...history(2)[1]!,
    metadata: { model: "gpt-4o", generation_id: "gen_8f2c" },
    reference: "gen_8f2c",
    description: "Image generation (1024x1024)",
  };

  function renderHistory(rows: Transaction[], extra?: Parameters<typeof ledger>[2]) {
    const service = fakeService(ledger(rows, balance(100), extra));
    renderWithQueries(<Billing api={service.api} filters={{}} onFiltersChange={() => {}} />);
    return service;
  }

  it("opens to the reference, the metadata and the postings", async () => {
    const user = userEvent.setup();
    const { calls } = renderHistory([usage], (call) =>
      call.path === `/api/transactions/${usage.id}`
        ? json(
            detailOf(usage, [
              { lot_id: "01975c00-0000-7000-8000-0000000000a1", credits: -15, held: 0, created_at: "2025-06-12T09:29:15.123456Z" },
              { lot_id: "01975c00-0000-7000-8000-0000000000a2", credits: -5, held: 0, created_at: "2025-06-12T09:29:15.123456Z" },
            ]),
          )
        : undefined,
    );
    const toggle = await screen.findByRole("button", { name: "Details of Image generation (1024x1024)" });
    expect(toggle).toHaveAttribute("aria-expanded", "false");
    expect(screen.queryByTestId("transaction-details")).not.toBeInTheDocument();

    await user.click(toggle);

    expect(toggle).toHaveAttribute("aria-expanded", "true");
    const details = screen.getByTestId("transaction-details");
    expect(toggle.getAttribute("aria-controls")).toBe(screen.getByTestId("details-row").id);
    expect(within(details).getByTestId("details-reference")).toHaveTextContent("gen_8f2c");
    const metadata = within(details).getByTestId("details-metadata");
    expect(Array.from(metadata.querySelectorAll("div")).map((entry) => entry.textContent)).toEqual([
      "modelgpt-4o",
      "generation_idgen_8f2c",
    ]);
    const postings = await within(details).findByTestId("details-postings");
    expect(rowTexts(postings)).toEqual([
      ["01975c00-0000-7000-8000-0000000000a1", `${MINUS}15`, "0", "Jun 12, 2025, 9:29 AM"],
      ["01975c00-0000-7000-8000-0000000000a2", `${MINUS}5`, "0", "Jun 12, 2025, 9:29 AM"],
    ]);
    expect(calls.filter((call) => call.path === `/api/transactions/${usage.id}`)).toHaveLength(1);
    // still one row of the history, not two
    expect(screen.getAllByTestId("transaction-row")).toHaveLength(1);
  });

  it("opens and closes from the keyboard", async () => {
    const user = userEvent.setup();
    renderHistory([usage]);
    const toggle = await screen.findByRole("button", { name: /^Details of/ });
    toggle.focus();
    await user.keyboard("{Enter}");
    expect(toggle).toHaveAttribute("aria-expanded", "true");
    expect(screen.getByTestId("transaction-details")).toBeInTheDocument();
    await user.keyboard(" ");
    expect(toggle).toHaveAttribute("aria-expanded", "false");
    expect(screen.queryByTestId("transaction-details")).not.toBeInTheDocument();
  });

  it("says none for a row without metadata, reference or postings", async () => {
    const user = userEvent.setup();
    const failed: Transaction = { ...history(1)[0]!, status: "failed" };
    renderHistory([failed]);
    await user.click(await screen.findByRole("button", { name: /^Details of/ }));
    const details = screen.getByTestId("transaction-details");
    expect(within(details).getByTestId("details-reference")).toHaveTextContent("None");
    expect(within(details).queryByTestId("details-metadata")).not.toBeInTheDocument();
    expect(await within(details).findByTestId("details-no-postings")).toHaveTextContent(
      "None: this entry changed no credits.",
    );
  });

  it("reports postings that could not be read, and reads them on Retry", async () => {
    const user = userEvent.setup();
    let down = true;
    renderHistory([usage], (call) =>
      call.path.startsWith("/api/transactions/") && down ? problem(500, "Internal Server Error", "internal_error") : undefined,
    );
    await user.click(await screen.findByRole("button", { name: /^Details of/ }));
    expect(await screen.findByTestId("details-error")).toHaveTextContent("Couldn’t load the postings: Internal Server Error");
    down = false;
    await user.click(within(screen.getByTestId("details-error")).getByRole("button", { name: "Retry" }));
    expect(await screen.findByTestId("details-postings")).toBeInTheDocument();
  });
});
