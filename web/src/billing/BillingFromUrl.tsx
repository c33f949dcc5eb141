"use client";

import { QueryClientProvider } from "@tanstack/react-query";
import { useSearchParams } from "next/navigation";
import { useCallback, useMemo, useState } from "react";

import { Billing } from "./Billing";
import { filtersFromSearchParams, filtersToSearch, type HistoryFilters } from "./filters";
import { createBillingQueryClient } from "./queries";

/**
 * The billing content with its filters kept in the URL, so a filtered view can be linked and reloaded,
 * and the query client its reads share. A product with a QueryClientProvider of its own can render
 * `Billing` inside it instead (with `createBillingQueryClient`'s retry rule, or its own).
 */
export function BillingFromUrl() {
  const [queryClient] = useState(() => createBillingQueryClient());
  const searchParams = useSearchParams();
  const filters = useMemo(() => filtersFromSearchParams(searchParams), [searchParams]);
  const onFiltersChange = useCallback((next: HistoryFilters) => {
    const search = filtersToSearch(next);
    // Next.js syncs useSearchParams with the History API, without a round trip to the server.
    window.history.pushState(null, "", search ? `?${search}` : window.location.pathname);
  }, []);
  return (
    <QueryClientProvider client={queryClient}>
      <Billing filters={filters} onFiltersChange={onFiltersChange} />
    </QueryClientProvider>
  );
}
