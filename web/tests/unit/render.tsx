/** Rendering the page's parts inside a query client of their own, one per test, as the page does. */
import { QueryClientProvider, type QueryClient } from "@tanstack/react-query";
import { render, type RenderOptions } from "@testing-library/react";
import type { ReactElement, ReactNode } from "react";

import { createBillingQueryClient } from "@/billing/queries";

/** The page's client, with retries at once rather than after a second or more. */
export function testQueryClient(queries: Parameters<typeof createBillingQueryClient>[0] = {}): QueryClient {
  return createBillingQueryClient({ retryDelay: 0, ...queries });
}

export function renderWithQueries(ui: ReactElement, options: { client?: QueryClient } & RenderOptions = {}) {
  const client = options.client ?? testQueryClient();
  const wrapper = ({ children }: { children: ReactNode }) => (
    <QueryClientProvider client={client}>{children}</QueryClientProvider>
  );
  return { client, ...render(ui, { ...options, wrapper }) };
}
