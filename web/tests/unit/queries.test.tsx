import { focusManager } from "@tanstack/react-query";
import { act, screen, waitFor, within } from "@testing-library/react";
import { afterEach, describe, expect, it } from "vitest";

import { Billing } from "@/billing/Billing";
import { ApiFailureError, MAX_RETRIES, shouldRetry } from "@/billing/queries";

import { deferred, fakeService, history, ledger, problem, type Call } from "./fake-service";
import { renderWithQueries, testQueryClient } from "./render";

const historyCalls = (calls: Call[]) => calls.filter((call) => call.path === "/api/transactions");
const shownRows = () => screen.queryAllByTestId("transaction-row");

describe("the retry rule", () => {
  it.each([
    ["no answer", { kind: "network" } as const, true],
    ["a 500", { kind: "problem", status: 500, title: "Internal Server Error" } as const, true],
    ["a 503", { kind: "problem", status: 503, title: "Database unavailable" } as const, true],
    ["a 429", { kind: "problem", status: 429, title: "Too Many Requests" } as const, true],
    ["a 404", { kind: "problem", status: 404, title: "Not Found" } as const, false],
    ["a 422", { kind: "problem", status: 422, title: "Validation failed" } as const, false],
    ["a 401", { kind: "unauthorized" } as const, false],
    ["no token", { kind: "signed-out" } as const, false],
    ["a page built without the service's URL", { kind: "problem", status: 0, title: "The billing page is not configured" } as const, false],
  ])("after %s retries: %s", (_, failure, retried) => {
    expect(shouldRetry(0, new ApiFailureError(failure))).toBe(retried);
  });

  it(`gives up after ${MAX_RETRIES} retries`, () => {
    const failure = new ApiFailureError({ kind: "network" });
    expect(shouldRetry(MAX_RETRIES - 1, failure)).toBe(true);
    expect(shouldRetry(MAX_RETRIES, failure)).toBe(false);
  });
});

describe("the page's reads through TanStack Query", () => {
  afterEach(() => {
    focusManager.setFocused(undefined);
  });

  it("asks again on a 5xx before it shows the error, three times in all", async () => {
    const { api, calls } = fakeService((call) =>
      call.path === "/api/transactions" ? problem(503, "Database unavailable", "database_unavailable") : ledger([])(call),
    );
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    const error = await screen.findByTestId("billing-error");
    expect(within(error).getByTestId("billing-error-message")).toHaveTextContent("Database unavailable");
    expect(historyCalls(calls)).toHaveLength(1 + MAX_RETRIES);
  });

  it("never asks again on a 4xx: the same question gets the same answer", async () => {
    const { api, calls } = fakeService((call) =>
      call.path === "/api/transactions"
        ? problem(422, "Validation failed", "validation_error")
        : ledger([])(call),
    );
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    expect(await screen.findByTestId("billing-error-message")).toHaveTextContent("Validation failed");
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(historyCalls(calls)).toHaveLength(1);
  });

  it("never asks again on a 401", async () => {
    const { api, calls } = fakeService((call) =>
      call.path === "/api/balance" ? problem(401, "Unauthorized", "invalid_token") : ledger(history(3))(call),
    );
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);

    await screen.findByTestId("session-expired");
    await new Promise((resolve) => setTimeout(resolve, 20));
    expect(calls.filter((call) => call.path === "/api/balance")).toHaveLength(1);
  });

  it("shows what the ledger says now when the tab comes back to the front", async () => {
    const rows = history(3);
    const { api, calls } = fakeService((call) => ledger(rows)(call));
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />, {
      client: testQueryClient({ staleTime: 0 }),
    });
    await waitFor(() => expect(shownRows()).toHaveLength(3));

    // a generation ran while the tab was in the background
    rows.unshift({ ...rows[1]!, id: "01975c3e-8a41-7c2b-9f1e-0000000000ff", description: "While you were away" });
    act(() => focusManager.setFocused(false));
    act(() => focusManager.setFocused(true));

    await waitFor(() => expect(shownRows()).toHaveLength(4));
    expect(shownRows()[0]).toHaveTextContent("While you were away");
    expect(historyCalls(calls)).toHaveLength(2);
    // the rows stayed on screen while the page asked again
    expect(screen.queryByTestId("history-loading")).not.toBeInTheDocument();
  });

  it("keeps each filter's answer: going back to a filter shows its rows at once, without asking again", async () => {
    const rows = history(12);
    const { api, calls } = fakeService((call) => ledger(rows)(call));
    const { rerender } = renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);
    await waitFor(() => expect(shownRows()).toHaveLength(12));

    rerender(<Billing api={api} filters={{ type: "purchase" }} onFiltersChange={() => {}} />);
    await waitFor(() => expect(shownRows()).toHaveLength(4));

    rerender(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);
    expect(shownRows()).toHaveLength(12);
    expect(screen.queryByTestId("history-loading")).not.toBeInTheDocument();
    expect(historyCalls(calls).map((call) => call.query.type ?? "all")).toEqual(["all", "purchase"]);
  });

  it("cancels the request for the old filter once the filter has changed", async () => {
    const gate = deferred<void>();
    const { api, calls } = fakeService(async (call) => {
      if (call.path === "/api/transactions" && !call.query.type) await gate.promise;
      return ledger(history(6))(call);
    });
    const { rerender } = renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />);
    await waitFor(() => expect(historyCalls(calls)).toHaveLength(1));
    const unfiltered = historyCalls(calls)[0]!;
    expect(unfiltered.signal.aborted).toBe(false);

    rerender(<Billing api={api} filters={{ type: "usage" }} onFiltersChange={() => {}} />);

    await waitFor(() => expect(unfiltered.signal.aborted).toBe(true));
    await waitFor(() => expect(shownRows()).toHaveLength(4));
    await act(async () => gate.resolve());
  });

  it("keeps the rows through a failed refetch in the background, but not through a 401", async () => {
    let answer: "ok" | "down" | "expired" = "ok";
    const { api } = fakeService((call) => {
      if (answer === "down") return problem(503, "Database unavailable", "database_unavailable");
      if (answer === "expired") return problem(401, "Unauthorized", "invalid_token");
      return ledger(history(3))(call);
    });
    const client = testQueryClient({ staleTime: 0 });
    renderWithQueries(<Billing api={api} filters={{}} onFiltersChange={() => {}} />, { client });
    await waitFor(() => expect(shownRows()).toHaveLength(3));

    answer = "down";
    await act(async () => client.refetchQueries());
    expect(shownRows()).toHaveLength(3);
    expect(screen.queryByTestId("billing-error")).not.toBeInTheDocument();

    answer = "expired";
    await act(async () => client.refetchQueries());
    expect(await screen.findByTestId("session-expired")).toBeInTheDocument();
    expect(shownRows()).toHaveLength(0);
  });
});
