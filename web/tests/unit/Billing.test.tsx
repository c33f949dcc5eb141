import { act, screen, waitFor, within } from "@testing-library/react";
import userEvent from "@testing-library/user-event";
import { afterEach, describe, expect, it, vi } from "vitest";

import type { Transaction } from "@/api/client";
import { Billing } from "@/billing/Billing";
import type { HistoryFilters } from "@/billing/filters";

import {
  balance,
  BASE_URL,
  deferred,
  fakeService,
  history,
  json,
  ledger,
  problem,
  TOKEN,
  type Answer,
} from "./fake-service";
import { renderWithQueries } from "./render";

const MINUS = "\u2212";

function renderBilling(answer: Answer, options: { filters?: HistoryFilters; token?: string | null } = {}) {
  const service = fakeService(answer, options.token === undefined ? TOKEN : options.token);
  const onFiltersChange = vi.fn();
  const view = renderWithQueries(
    <Billing api={service.api} filters={options.filters ?? {}} onFiltersChange={onFiltersChange} />,
  );
  return { ...service, onFiltersChange, view };
}

/** The six columns of a row as they read (the seventh holds the row's Details button). */
function cellTexts(row: HTMLElement) {
  return within(row).getAllByRole("cell").slice(0, 6).map((cell) => cell.textContent);
}

function shownRows() {
  return screen.queryAllByTestId("transaction-row");
}

function descriptions() {
  return shownRows().map((row) => within(row).getAllByRole("cell")[2]?.textContent);
}

/** The balance card in its error state: frame and heading kept, the reason in place of the numbers. */
function expectBalanceUnavailable(reason: string | RegExp) {
  const card = screen.getByTestId("balance-card");
  expect(within(card).getByRole("heading", { name: "Available credits" })).toBeInTheDocument();
  const error = within(card).getByTestId("balance-error");
  expect(error).toHaveTextContent("Balance unavailable");
  expect(within(error).getByTestId("balance-error-message")).toHaveTextContent(reason);
  expect(within(card).queryByTestId("balance-available")).not.toBeInTheDocument();
  expect(within(card).queryByTestId("balance-total")).not.toBeInTheDocument();
  expect(within(card).queryByTestId("balance-held")).not.toBeInTheDocument();
  expect(within(card).queryByTestId("balance-paid")).not.toBeInTheDocument();
  expect(within(card).queryByTestId("balance-promotional")).not.toBeInTheDocument();
  expect(within(card).queryByTestId("balance-next-expiry")).not.toBeInTheDocument();
  expect(card).not.toHaveTextContent(/\d/); // no numbers at all, stale or not
  expect(screen.queryByTestId("balance-loading")).not.toBeInTheDocument();
  return card;
}

describe("the billing page", () => {
  afterEach(() => {
    vi.useRealTimers();
  });

  it("shows a loading skeleton, then the balance and the newest transactions", async () => {
    // a quarter of an hour before the pending usage's reservation lapses
    vi.useFakeTimers({ toFake: ["Date"] });
    vi.setSystemTime(new Date("2025-06-12T09:45:00Z"));
    const gate = deferred<void>();
    const rows: Transaction[] = [
      {
        ...history(1)[0]!,
        id: "01975c41-2f6e-7a3b-8c1d-5e6f7a8b9c0d",
        type: "usage",
        amount: "0.00",
        credits: -20,
        description: "Image generation (1024x1024)",
        status: "pending",
        created_at: "2025-06-12T09:41:03.512204Z",
        hold_expires_at: "2025-06-12T09:56:03.512204Z",
      },
      {
        ...history(1)[0]!,
        id: "01975c3e-8a41-7c2b-9f1e-3d5a6b7c8d90",
        type: "purchase",
        amount: "1234.56",
        credits: 120000,
        description: "Studio pack: 120,000 credits",
        status: "completed",
        created_at: "2025-06-12T09:30:15.123456Z",
      },
      {
        ...history(1)[0]!,
        id: "01975c3e-0000-7c2b-9f1e-3d5a6b7c8d90",
        type: "purchase",
        amount: "19.99",
        credits: 1200,
        description: "Creator pack: 1,200 credits",
        status: "failed",
        created_at: "2025-06-11T23:59:59.999999Z",
      },
    ];
    const answer = ledger(rows, balance(1587, 50));
    const { calls } = renderBilling(async (call) => {
      await gate.promise;
      return answer(call);
    });

    expect(screen.getByTestId("history-loading")).toBeInTheDocument();
    expect(screen.getByText("Loading your transactions…")).toBeInTheDocument();
    expect(screen.getByTestId("balance-loading")).toBeInTheDocument();
    expect(screen.queryByRole("table", { name: "History" })).not.toBeInTheDocument();

    await act(async () => gate.resolve());

    expect(await screen.findByRole("table", { name: "History" })).toBeInTheDocument();
    expect(screen.queryByTestId("history-loading")).not.toBeInTheDocument();
    expect(screen.getByTestId("balance-available")).toHaveTextContent("1,587");
    expect(screen.getByTestId("balance-total")).toHaveTextContent("1,637");
    expect(screen.getByTestId("balance-held")).toHaveTextContent("50");

    const table = screen.getByRole("table", { name: "History" });
    const headers = within(table).getAllByRole("columnheader").map((header) => header.textContent);
    expect(headers).toEqual(["Date", "Type", "Description", "Credits", "Amount", "Status", "Details"]);

    const cells = shownRows().map(cellTexts);
    expect(cells).toEqual([
      // a pending usage: its credits reserved, not charged, until the reservation lapses
      [
        "Jun 12, 2025, 9:41 AM",
        "Usage",
        "Image generation (1024x1024)",
        `${MINUS}20`,
        "\u2014",
        "Reserved, not yet charged, lapses Jun 12, 2025, 9:56 AM",
      ],
      ["Jun 12, 2025, 9:30 AM", "Purchase", "Studio pack: 120,000 credits", "+120,000", "$1,234.56", "Completed"],
      ["Jun 11, 2025, 11:59 PM", "Purchase", "Creator pack: 1,200 credits", "+1,200", "$19.99", "Failed"],
    ]);
    // the exact UTC time on hover
    const times = shownRows().map((row) => within(row).getAllByText(/2025/)[0]!.getAttribute("title"));
    expect(times).toEqual([
      "2025-06-12 09:41:03.512204 UTC",
      "2025-06-12 09:30:15.123456 UTC",
      "2025-06-11 23:59:59.999999 UTC",
    ]);
    // and the moment the reservation lapses, exactly, on hover
    const lapse = within(shownRows()[0]!).getByTestId("hold-expiry").querySelector("time")!;
    expect(lapse).toHaveAttribute("datetime", "2025-06-12T09:56:03.512204Z");
    expect(lapse).toHaveAttribute("title", "2025-06-12 09:56:03.512204 UTC");

    // one page of history, the balance, the usage and this month's statement, with the user's token,
    // from the configured service
    expect(calls.map((call) => `${call.url.origin}${call.path}`).sort()).toEqual([
      `${BASE_URL}/api/balance`,
      `${BASE_URL}/api/statements`,
      `${BASE_URL}/api/transactions`,
      `${BASE_URL}/api/usage/summary`,
    ]);
    expect(calls.every((call) => call.authorization === `Bearer ${TOKEN}`)).toBe(true);
    expect(calls.find((call) => call.path === "/api/transactions")?.query).toEqual({ limit: "20" });
    // three rows, no more pages
    expect(screen.queryByRole("button", { name: "Load more" })).not.toBeInTheDocument();
  });

  it("says there are no transactions yet, with a hint to buy credits", async () => {
    renderBilling(ledger([], balance(0)));

    expect(await screen.findByText("No transactions yet")).toBeInTheDocument();
    expect(screen.getByText(/Buy credits to get started/)).toBeInTheDocument();
    expect(screen.queryByRole("table", { name: "History" })).not.toBeInTheDocument();
    expect(screen.getByTestId("balance-available")).toHaveTextContent("0");
  });

  it("offers to clear the filters when nothing matches them", async () => {
    const user = userEvent.setup();
    const { onFiltersChange } = renderBilling(ledger(history(3)), { filters: { status: "failed" } });

    expect(await screen.findByText("No transactions match these filters")).toBeInTheDocument();
    expect(screen.queryByText("No transactions yet")).not.toBeInTheDocument();
    await user.click(screen.getAllByRole("button", { name: "Clear filters" })[0]!);
    expect(onFiltersChange).toHaveBeenCalledWith({});
  });

  it("shows the problem's title on a 5xx, and the rows after Retry", async () => {
    const user = userEvent.setup();
    let down = true;
    const healthy = ledger(history(2));
    renderBilling((call) =>
      down
        ? problem(503, "Database unavailable", "database_unavailable", "Traceback (most recent call last): ...")
        : healthy(call),
    );

    const error = await screen.findByTestId("billing-error");
    expect(within(error).getByTestId("billing-error-message")).toHaveTextContent("Database unavailable");
    expect(error).not.toHaveTextContent("Traceback");
    expect(shownRows()).toHaveLength(0);
    // the card stays in its place and says why, in the history's words, without Retry of its own
    const card = expectBalanceUnavailable("Database unavailable");
    expect(card).not.toHaveTextContent("Traceback");
    expect(within(card).queryByRole("button")).not.toBeInTheDocument();
    expect(screen.getAllByRole("button", { name: "Retry" })).toHaveLength(1);

    down = false;
    await user.click(within(error).getByRole("button", { name: "Retry" }));

    await waitFor(() => expect(shownRows()).toHaveLength(2));
    expect(screen.queryByTestId("billing-error")).not.toBeInTheDocument();
    expect(screen.getByTestId("balance-card")).toBeInTheDocument();
    expect(screen.queryByTestId("balance-error")).not.toBeInTheDocument();
    expect(screen.getByTestId("balance-available")).toHaveTextContent("1,587");
  });

  it("says the service could not be reached when there is no answer at all, and recovers on Retry", async () => {
    const user = userEvent.setup();
    let down = true;
    const healthy = ledger(history(4));
    renderBilling((call) => {
      if (down) throw new TypeError("Failed to fetch");
      return healthy(call);
    });

    const error = await screen.findByTestId("billing-error");
    expect(error).toHaveTextContent("The billing service could not be reached.");
    expect(error).not.toHaveTextContent("Failed to fetch");
    expectBalanceUnavailable("The billing service could not be reached.");
    expect(screen.getByTestId("balance-card")).not.toHaveTextContent("Failed to fetch");

    down = false;
    await user.click(screen.getByRole("button", { name: "Retry" }));
    await waitFor(() => expect(shownRows()).toHaveLength(4));
  });

  it("never shows a body that is not a problem (a proxy's error page, say)", async () => {
    renderBilling(
      () =>
        new Response("<html><body>502 Bad Gateway nginx stack</body></html>", {
          status: 502,
          headers: { "Content-Type": "text/html" },
        }),
    );

    const error = await screen.findByTestId("billing-error");
    expect(error).toHaveTextContent("The billing service had a problem");
    expect(error).not.toHaveTextContent("nginx");
    expectBalanceUnavailable(/^The billing service had a problem/);
    expect(screen.getByTestId("balance-card")).not.toHaveTextContent("nginx");
  });

  it("asks to sign in again on a 401, without rows, numbers or Retry, the card saying the session expired", async () => {
    const answer = ledger(history(3));
    renderBilling((call) =>
      call.path === "/api/transactions" ? problem(401, "Unauthorized", "invalid_token", "The token has expired.") : answer(call),
    );

    const expired = await screen.findByTestId("session-expired");
    expect(expired).toHaveTextContent("Your session has expired — sign in again");
    expect(within(expired).getByRole("link", { name: "Sign in again" })).toHaveAttribute(
      "href",
      expect.stringMatching(/^\/dev\/sign-in\?next=/),
    );
    expect(screen.queryByTestId("billing-error")).not.toBeInTheDocument();
    expect(screen.queryByRole("button", { name: "Retry" })).not.toBeInTheDocument();
    // the balance answered, but its numbers are not shown once the session is refused
    const card = expectBalanceUnavailable("Your session has expired — sign in again");
    expect(within(card).queryByRole("link")).not.toBeInTheDocument(); // the one way out is the panel's
    expect(shownRows()).toHaveLength(0);
  });

  it("asks to sign in, and sends nothing, when there is no token", async () => {
    const { calls } = renderBilling(ledger(history(3)), { token: null });

    expect(await screen.findByTestId("signed-out")).toHaveTextContent("Sign in to see your billing");
    expect(screen.queryByTestId("session-expired")).not.toBeInTheDocument();
    expectBalanceUnavailable("You are signed out.");
    expect(screen.queryByRole("button", { name: "Retry" })).not.toBeInTheDocument();
    expect(calls).toHaveLength(0);
  });

  it("keeps the card with the history's reason when only the balance fails, and no numbers", async () => {
    const answer = ledger(history(3));
    renderBilling((call) =>
      call.path === "/api/balance" ? problem(503, "Database unavailable", "database_unavailable") : answer(call),
    );

    const error = await screen.findByTestId("billing-error");
    expect(within(error).getByTestId("billing-error-message")).toHaveTextContent("Database unavailable");
    expect(within(error).getByRole("button", { name: "Retry" })).toBeInTheDocument();
    expectBalanceUnavailable("Database unavailable");
    // one load, one state: the history that did answer is not shown beside a balance that did not
    expect(shownRows()).toHaveLength(0);
  });

  it("shows no balance it no longer vouches for when only the history fails", async () => {
    const answer = ledger(
      history(3),
      balance(1587, 50, { promotional: 100, nextExpiry: { credits: 100, expires_at: "2025-07-12T09:30:00.000000Z" } }),
    );
    renderBilling((call) =>
      call.path === "/api/transactions" ? problem(500, "Internal Server Error", "internal_error") : answer(call),
    );

    await screen.findByTestId("billing-error");
    expectBalanceUnavailable("Internal Server Error");
    expect(screen.queryByText("1,587")).not.toBeInTheDocument();
  });

  it("says the same reason in the card and the history when both reads fail", async () => {
    renderBilling((call) => {
      if (call.path === "/api/balance") throw new TypeError("Failed to fetch");
      return problem(503, "Database unavailable", "database_unavailable");
    });

    const error = await screen.findByTestId("billing-error");
    const reason = within(error).getByTestId("billing-error-message").textContent;
    expect(reason).toBe("The billing service could not be reached.");
    expectBalanceUnavailable(reason!);
    expect(within(screen.getByTestId("balance-card")).getByTestId("balance-error-message").textContent).toBe(reason);
    expect(shownRows()).toHaveLength(0);
  });

  it("drops the numbers shown before when a later load fails", async () => {
    const answer = ledger(history(6), balance(1587, 50));
    let down = false;
    const service = fakeService((call) => (down ? problem(503, "Database unavailable", "database_unavailable") : answer(call)));
    const { rerender } = renderWithQueries(<Billing api={service.api} filters={{}} onFiltersChange={() => {}} />);
    await waitFor(() => expect(screen.getByTestId("balance-available")).toHaveTextContent("1,587"));

    down = true;
    rerender(<Billing api={service.api} filters={{ type: "usage" }} onFiltersChange={() => {}} />);

    await screen.findByTestId("billing-error");
    expectBalanceUnavailable("Database unavailable");
    expect(screen.queryByText("1,587")).not.toBeInTheDocument();
  });

  it("brings the numbers back on Retry, through the skeleton, once the balance answers", async () => {
    const user = userEvent.setup();
    const answer = ledger(history(2), balance(1587, 50));
    let balanceDown = true;
    let gate: ReturnType<typeof deferred<void>> | null = null;
    renderBilling(async (call) => {
      if (gate) await gate.promise;
      if (call.path === "/api/balance" && balanceDown) return problem(503, "Database unavailable", "database_unavailable");
      return answer(call);
    });

    await screen.findByTestId("balance-error");
    balanceDown = false;
    gate = deferred<void>();
    await user.click(screen.getByRole("button", { name: "Retry" }));

    // while the new load is on its way: neither the old error nor any numbers
    expect(screen.getByTestId("balance-loading")).toBeInTheDocument();
    expect(screen.queryByTestId("balance-error")).not.toBeInTheDocument();
    expect(screen.queryByTestId("balance-available")).not.toBeInTheDocument();

    await act(async () => gate?.resolve());
    await waitFor(() => expect(screen.getByTestId("balance-available")).toHaveTextContent("1,587"));
    const card = screen.getByTestId("balance-card");
    expect(within(card).getByTestId("balance-total")).toHaveTextContent("1,637");
    expect(within(card).getByTestId("balance-held")).toHaveTextContent("50");
    expect(within(card).queryByTestId("balance-error")).not.toBeInTheDocument();
    expect(screen.queryByTestId("billing-error")).not.toBeInTheDocument();
    expect(shownRows()).toHaveLength(2);
  });

  it("appends the next page on Load more, disabled while loading, and hides it after the last page", async () => {
    const user = userEvent.setup();
    const rows = history(45);
    const answer = ledger(rows);
    let gate: ReturnType<typeof deferred<void>> | null = null;
    const { calls } = renderBilling(async (call) => {
      if (call.query.cursor && gate) await gate.promise;
      return answer(call);
    });

    await waitFor(() => expect(shownRows()).toHaveLength(20));
    expect(descriptions()).toEqual(rows.slice(0, 20).map((row) => row.description));

    gate = deferred<void>();
    await user.click(screen.getByRole("button", { name: "Load more" }));
    const busy = screen.getByRole("button", { name: "Loading…" });
    expect(busy).toBeDisabled();
    await user.click(busy); // a second click while loading asks for nothing more
    expect(calls.filter((call) => call.query.cursor)).toHaveLength(1);
    expect(shownRows()).toHaveLength(20);

    await act(async () => gate?.resolve());
    await waitFor(() => expect(shownRows()).toHaveLength(40));
    gate = null;
    // the focus moves to the first new row
    expect(document.activeElement).toBe(shownRows()[20]);

    await user.click(screen.getByRole("button", { name: "Load more" }));
    await waitFor(() => expect(shownRows()).toHaveLength(45));

    expect(descriptions()).toEqual(rows.map((row) => row.description));
    expect(screen.queryByRole("button", { name: /Load more|Loading/ })).not.toBeInTheDocument();
    expect(calls.filter((call) => call.path === "/api/transactions").map((call) => call.query.cursor)).toEqual([
      undefined,
      "c20",
      "c40",
    ]);
    expect(screen.getByText("5 more transactions loaded. That is all of them.")).toBeInTheDocument();
  });

  it("shows a row only once when it comes back on the next page", async () => {
    const user = userEvent.setup();
    const rows = history(25);
    renderBilling(
      ledger(rows, balance(100), (call) => {
        if (call.path !== "/api/transactions") return undefined;
        if (!call.query.cursor) return json({ data: rows.slice(0, 20), has_more: true, next_cursor: "c19" });
        // the service's next page overlaps the first by one row
        return json({ data: rows.slice(19), has_more: false, next_cursor: null });
      }),
    );

    await waitFor(() => expect(shownRows()).toHaveLength(20));
    await user.click(screen.getByRole("button", { name: "Load more" }));
    await waitFor(() => expect(shownRows()).toHaveLength(25));
    expect(new Set(descriptions()).size).toBe(25);
  });

  it("shows a failed Load more inline and keeps the rows, then loads on Try again", async () => {
    const user = userEvent.setup();
    const rows = history(30);
    const answer = ledger(rows);
    let failing = true;
    const { calls } = renderBilling((call) => {
      if (call.query.cursor && failing) return problem(500, "Internal Server Error", "internal_error");
      return answer(call);
    });

    await waitFor(() => expect(shownRows()).toHaveLength(20));
    await user.click(screen.getByRole("button", { name: "Load more" }));

    expect(await screen.findByTestId("load-more-error")).toHaveTextContent(
      "Couldn’t load more transactions: Internal Server Error",
    );
    // a 5xx may pass: asked three times in all before the page says so
    expect(calls.filter((call) => call.query.cursor)).toHaveLength(3);
    expect(shownRows()).toHaveLength(20);
    expect(screen.queryByTestId("billing-error")).not.toBeInTheDocument();

    failing = false;
    await user.click(screen.getByRole("button", { name: "Try again" }));
    await waitFor(() => expect(shownRows()).toHaveLength(30));
    expect(screen.queryByTestId("load-more-error")).not.toBeInTheDocument();
  });

  it("keeps the rows and asks to sign in again when the session expires on Load more", async () => {
    const user = userEvent.setup();
    const answer = ledger(history(30));
    renderBilling((call) => (call.query.cursor ? problem(401, "Unauthorized", "invalid_token") : answer(call)));

    await waitFor(() => expect(shownRows()).toHaveLength(20));
    await user.click(screen.getByRole("button", { name: "Load more" }));

    const inline = await screen.findByTestId("load-more-error");
    expect(inline).toHaveTextContent("Your session has expired — sign in again");
    expect(within(inline).getByRole("link", { name: "sign in again" })).toBeInTheDocument();
    expect(shownRows()).toHaveLength(20);
    expect(screen.queryByRole("button", { name: /Load more|Try again/ })).not.toBeInTheDocument();
  });

  it("asks the service for the filtered history and reports filter changes", async () => {
    const user = userEvent.setup();
    const rows = history(12);
    const { calls, onFiltersChange } = renderBilling(ledger(rows), { filters: { type: "usage" } });

    await waitFor(() => expect(shownRows()).toHaveLength(rows.filter((row) => row.type === "usage").length));
    expect(shownRows().every((row) => within(row).getByText("Usage"))).toBe(true);
    expect(calls.find((call) => call.path === "/api/transactions")?.query).toEqual({ limit: "20", type: "usage" });
    expect(screen.getByRole("combobox", { name: "Type" })).toHaveValue("usage");

    await user.selectOptions(screen.getByRole("combobox", { name: "Status" }), "pending");
    expect(onFiltersChange).toHaveBeenLastCalledWith({ type: "usage", status: "pending" });
    await user.selectOptions(screen.getByRole("combobox", { name: "Type" }), "");
    expect(onFiltersChange).toHaveBeenLastCalledWith({ type: undefined });
  });

  it("never shows the answer to an older filter once the filter has changed", async () => {
    const rows = history(10);
    const answer = ledger(rows);
    const slowUnfiltered = deferred<void>();
    const service = fakeService(async (call) => {
      if (call.path === "/api/transactions" && !call.query.type) await slowUnfiltered.promise;
      return answer(call);
    });
    const { rerender } = renderWithQueries(<Billing api={service.api} filters={{}} onFiltersChange={() => {}} />);
    rerender(<Billing api={service.api} filters={{ type: "purchase" }} onFiltersChange={() => {}} />);

    const purchases = rows.filter((row) => row.type === "purchase");
    await waitFor(() => expect(shownRows()).toHaveLength(purchases.length));
    await act(async () => slowUnfiltered.resolve());
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(descriptions()).toEqual(purchases.map((row) => row.description));
  });

  it("shows free and expired credits with badges of their own, signs that follow the credits and no amount", async () => {
    const base = history(1)[0]!;
    const rows: Transaction[] = [
      {
        ...base,
        id: "01975c50-0000-7000-8000-000000000004",
        type: "expiration",
        amount: "0.00",
        credits: -100,
        description: "100 promotional credits expired",
        created_at: "2025-07-12T09:30:00.000000Z",
      },
      {
        ...base,
        id: "01975c50-0000-7000-8000-000000000003",
        type: "usage",
        amount: "0.00",
        credits: -20,
        description: "Image generation (1024x1024)",
        created_at: "2025-06-20T12:00:00.000000Z",
      },
      {
        ...base,
        id: "01975c50-0000-7000-8000-000000000002",
        type: "grant",
        amount: "0.00",
        credits: 2500,
        description: "Welcome bonus: 2,500 credits",
        created_at: "2025-06-12T10:00:00.000000Z",
      },
      {
        ...base,
        id: "01975c50-0000-7000-8000-000000000001",
        type: "purchase",
        amount: "9.99",
        credits: 500,
        description: "Starter pack: 500 credits",
        created_at: "2025-06-12T09:30:15.123456Z",
      },
    ];
    renderBilling(ledger(rows));

    await waitFor(() => expect(shownRows()).toHaveLength(4));
    const cells = shownRows().map(cellTexts);
    expect(cells).toEqual([
      ["Jul 12, 2025, 9:30 AM", "Expired", "100 promotional credits expired", `${MINUS}100`, "\u2014", "Completed"],
      ["Jun 20, 2025, 12:00 PM", "Usage", "Image generation (1024x1024)", `${MINUS}20`, "\u2014", "Completed"],
      ["Jun 12, 2025, 10:00 AM", "Free credits", "Welcome bonus: 2,500 credits", "+2,500", "\u2014", "Completed"],
      ["Jun 12, 2025, 9:30 AM", "Purchase", "Starter pack: 500 credits", "+500", "$9.99", "Completed"],
    ]);

    const [expiration, usage, grant, purchase] = shownRows();
    // each type its own badge
    const badge = (row: HTMLElement | undefined) => within(row!).getAllByRole("cell")[1]!.firstElementChild!.className;
    expect(badge(grant)).toMatch(/type_grant/);
    expect(badge(expiration)).toMatch(/type_expiration/);
    expect(new Set([expiration, usage, grant, purchase].map(badge)).size).toBe(4);
    // the colour follows the credits: a grant is credits in like a purchase, an expiration credits out like usage
    const direction = (row: HTMLElement | undefined) => {
      const className = within(row!).getByTestId("credits").className;
      return /creditsIn/.test(className) ? "in" : /creditsOut/.test(className) ? "out" : "none";
    };
    expect([expiration, usage, grant, purchase].map(direction)).toEqual(["out", "out", "in", "in"]);
  });

  it("shows the paid and promotional split and the soonest expiry when some credits are promotional", async () => {
    renderBilling(
      ledger(
        history(2),
        balance(1300, 20, { promotional: 100, nextExpiry: { credits: 100, expires_at: "2025-07-12T09:30:00.000000Z" } }),
      ),
    );

    await waitFor(() => expect(screen.getByTestId("balance-available")).toHaveTextContent("1,300"));
    const card = screen.getByTestId("balance-card");
    expect(within(card).getByTestId("balance-paid")).toHaveTextContent(/^1,200$/);
    expect(within(card).getByTestId("balance-promotional")).toHaveTextContent(/^100$/);
    const split = within(card).getByTestId("balance-split");
    expect(split).toHaveTextContent("1,200 paid");
    expect(split).toHaveTextContent("100 promotional");
    expect(within(split).getByText("·")).toHaveAttribute("aria-hidden", "true");

    const expiry = within(card).getByTestId("balance-next-expiry");
    expect(expiry.textContent?.replace(/[\u202f\u00a0]/g, " ")).toBe("100 credits expire on Jul 12, 2025, 9:30 AM");
    const time = within(expiry).getByText(/Jul 12, 2025/);
    expect(time.tagName).toBe("TIME");
    expect(time).toHaveAttribute("datetime", "2025-07-12T09:30:00.000000Z");
    expect(time).toHaveAttribute("title", "2025-07-12 09:30:00.000000 UTC");
    // the totals beside them are unchanged
    expect(within(card).getByTestId("balance-total")).toHaveTextContent("1,320");
    expect(within(card).getByTestId("balance-held")).toHaveTextContent("20");
  });

  it("shows neither the split nor an expiry when all credits are paid and none expire", async () => {
    renderBilling(ledger(history(2), balance(1587, 50)));

    await waitFor(() => expect(screen.getByTestId("balance-available")).toHaveTextContent("1,587"));
    const card = screen.getByTestId("balance-card");
    expect(within(card).queryByTestId("balance-split")).not.toBeInTheDocument();
    expect(within(card).queryByTestId("balance-paid")).not.toBeInTheDocument();
    expect(within(card).queryByTestId("balance-promotional")).not.toBeInTheDocument();
    expect(within(card).queryByTestId("balance-next-expiry")).not.toBeInTheDocument();
    expect(card).not.toHaveTextContent(/promotional|expire/);
  });

  it("shows the expiry of paid credits without a split when none are promotional", async () => {
    renderBilling(
      ledger(history(2), balance(1, 0, { nextExpiry: { credits: 1, expires_at: "2025-12-31T23:59:59.000000Z" } })),
    );

    const expiry = await screen.findByTestId("balance-next-expiry");
    expect(expiry.textContent?.replace(/[\u202f\u00a0]/g, " ")).toBe("1 credit expires on Dec 31, 2025, 11:59 PM");
    expect(screen.queryByTestId("balance-split")).not.toBeInTheDocument();
    expect(screen.queryByTestId("balance-promotional")).not.toBeInTheDocument();
  });

  it("offers free and expired credits in the type filter, and asks the service for them", async () => {
    const user = userEvent.setup();
    const base = history(1)[0]!;
    const rows: Transaction[] = [
      { ...base, id: "01975c50-0000-7000-8000-0000000000e1", type: "expiration", amount: "0.00", credits: -100,
        description: "100 promotional credits expired" },
      { ...base, id: "01975c50-0000-7000-8000-0000000000e2", type: "grant", amount: "0.00", credits: 100,
        description: "Welcome bonus: 100 credits" },
      ...history(4),
    ];
    const { calls, onFiltersChange } = renderBilling(ledger(rows), { filters: { type: "expiration" } });

    await waitFor(() => expect(shownRows()).toHaveLength(1));
    expect(descriptions()).toEqual(["100 promotional credits expired"]);
    expect(calls.find((call) => call.path === "/api/transactions")?.query).toEqual({ limit: "20", type: "expiration" });

    const select = screen.getByRole("combobox", { name: "Type" });
    expect(select).toHaveValue("expiration");
    expect(within(select).getAllByRole("option").map((option) => [option.getAttribute("value"), option.textContent])).toEqual([
      ["", "All types"],
      ["purchase", "Purchases"],
      ["usage", "Usage"],
      ["grant", "Free credits"],
      ["refund", "Refunds"],
      ["reversal", "Returned credits"],
      ["adjustment", "Adjustments"],
      ["expiration", "Expired credits"],
    ]);

    await user.selectOptions(select, "grant");
    expect(onFiltersChange).toHaveBeenLastCalledWith({ type: "grant" });
  });

  it("shows refunds, returned credits and adjustments with badges of their own, signs that follow the credits and dollars only for refunds", async () => {
    const base = history(1)[0]!;
    const purchaseId = "01975c60-0000-7000-8000-000000000001";
    const usageId = "01975c60-0000-7000-8000-000000000002";
    const rows: Transaction[] = [
      {
        ...base,
        id: "01975c60-0000-7000-8000-000000000007",
        type: "adjustment",
        amount: "0.00",
        credits: -30,
        description: "Correction: duplicate make-good (ticket 4813)",
        created_at: "2025-06-14T08:00:00.000000Z",
      },
      {
        ...base,
        id: "01975c60-0000-7000-8000-000000000006",
        type: "adjustment",
        amount: "0.00",
        credits: 50,
        description: "Make-good for the outage of 2025-06-11 (ticket 4812)",
        created_at: "2025-06-13T16:00:00.000000Z",
      },
      {
        ...base,
        id: "01975c60-0000-7000-8000-000000000005",
        type: "refund",
        amount: "0.00",
        credits: -100,
        description: "Refund: Starter pack (credits only)",
        created_at: "2025-06-13T12:00:00.000000Z",
        refunds: purchaseId,
      },
      {
        ...base,
        id: "01975c60-0000-7000-8000-000000000004",
        type: "refund",
        amount: "5.00",
        credits: -250,
        description: "Refund: Starter pack (partial)",
        created_at: "2025-06-13T09:00:00.000000Z",
        refunds: purchaseId,
      },
      {
        ...base,
        id: "01975c60-0000-7000-8000-000000000003",
        type: "reversal",
        amount: "0.00",
        credits: 8,
        description: "Reversal: generation failed after charging",
        created_at: "2025-06-12T10:05:00.000000Z",
        reverses: usageId,
      },
      {
        ...base,
        id: usageId,
        type: "usage",
        amount: "0.00",
        credits: -8,
        description: "Text generation, 4k tokens",
        created_at: "2025-06-12T10:00:00.000000Z",
      },
      {
        ...base,
        id: purchaseId,
        type: "purchase",
        amount: "9.99",
        credits: 500,
        description: "Starter pack: 500 credits",
        created_at: "2025-06-12T09:30:15.123456Z",
      },
    ];
    renderBilling(ledger(rows));

    await waitFor(() => expect(shownRows()).toHaveLength(7));
    const cells = shownRows().map(cellTexts);
    expect(cells).toEqual([
      ["Jun 14, 2025, 8:00 AM", "Adjustment", "Correction: duplicate make-good (ticket 4813)", `${MINUS}30`, "\u2014", "Completed"],
      ["Jun 13, 2025, 4:00 PM", "Adjustment", "Make-good for the outage of 2025-06-11 (ticket 4812)", "+50", "\u2014", "Completed"],
      // a refund shows the dollars it gave back, none included: credits taken back for nothing say "$0.00"
      ["Jun 13, 2025, 12:00 PM", "Refund", "Refund: Starter pack (credits only)", `${MINUS}100`, "$0.00", "Completed"],
      ["Jun 13, 2025, 9:00 AM", "Refund", "Refund: Starter pack (partial)", `${MINUS}250`, "$5.00", "Completed"],
      ["Jun 12, 2025, 10:05 AM", "Credits returned", "Reversal: generation failed after charging", "+8", "\u2014", "Completed"],
      ["Jun 12, 2025, 10:00 AM", "Usage", "Text generation, 4k tokens", `${MINUS}8`, "\u2014", "Completed"],
      ["Jun 12, 2025, 9:30 AM", "Purchase", "Starter pack: 500 credits", "+500", "$9.99", "Completed"],
    ]);

    const [adjustmentOut, adjustmentIn, freeRefund, refund, reversal, usage, purchase] = shownRows();
    // each type its own badge, the same for both adjustments whichever their sign
    const badge = (row: HTMLElement | undefined) => within(row!).getAllByRole("cell")[1]!.firstElementChild!.className;
    expect(badge(refund)).toMatch(/type_refund/);
    expect(badge(freeRefund)).toMatch(/type_refund/);
    expect(badge(reversal)).toMatch(/type_reversal/);
    expect(badge(adjustmentIn)).toMatch(/type_adjustment/);
    expect(badge(adjustmentOut)).toBe(badge(adjustmentIn));
    expect(new Set([adjustmentIn, refund, reversal, usage, purchase].map(badge)).size).toBe(5);
    // the colour follows the credits: a refund is credits out like usage, a reversal credits in like a
    // purchase, and an adjustment goes the way its sign says
    const direction = (row: HTMLElement | undefined) => {
      const className = within(row!).getByTestId("credits").className;
      return /creditsIn/.test(className) ? "in" : /creditsOut/.test(className) ? "out" : "none";
    };
    expect([adjustmentOut, adjustmentIn, freeRefund, refund, reversal, usage, purchase].map(direction)).toEqual([
      "out", "in", "out", "out", "in", "out", "in",
    ]);
  });

  it("offers refunds, returned credits and adjustments in the type filter, and asks the service for them", async () => {
    const user = userEvent.setup();
    const older = history(4); // a purchase, then usage
    const [purchase, usage] = [older[0]!, older[1]!];
    const rows: Transaction[] = [
      { ...purchase, id: "01975c60-0000-7000-8000-0000000000a1", type: "adjustment", amount: "0.00", credits: 50,
        description: "Make-good (ticket 4812)" },
      { ...purchase, id: "01975c60-0000-7000-8000-0000000000a2", type: "reversal", amount: "0.00", credits: 8,
        description: "Reversal: generation failed", reverses: usage.id },
      { ...purchase, id: "01975c60-0000-7000-8000-0000000000a3", type: "refund", amount: "5.00", credits: -250,
        description: "Refund: Starter pack (partial)", refunds: purchase.id },
      ...older,
    ];
    const { calls, onFiltersChange } = renderBilling(ledger(rows), { filters: { type: "refund" } });

    await waitFor(() => expect(shownRows()).toHaveLength(1));
    expect(descriptions()).toEqual(["Refund: Starter pack (partial)"]);
    expect(calls.find((call) => call.path === "/api/transactions")?.query).toEqual({ limit: "20", type: "refund" });

    const select = screen.getByRole("combobox", { name: "Type" });
    expect(select).toHaveValue("refund");
    const label = (value: string) => within(select).getAllByRole("option").find((option) => option.getAttribute("value") === value)?.textContent;
    expect(["refund", "reversal", "adjustment"].map(label)).toEqual(["Refunds", "Returned credits", "Adjustments"]);

    await user.selectOptions(select, "reversal");
    expect(onFiltersChange).toHaveBeenLastCalledWith({ type: "reversal" });
    await user.selectOptions(select, "adjustment");
    expect(onFiltersChange).toHaveBeenLastCalledWith({ type: "adjustment" });
  });
});
