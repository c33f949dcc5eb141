"use client";

import { useSearchParams } from "next/navigation";
import { useCallback, useMemo } from "react";

import { Billing } from "./Billing";
import { filtersFromSearchParams, filtersToSearch, type HistoryFilters } from "./filters";

/** The billing content with its filters kept in the URL, so a filtered view can be linked and reloaded. */
export function BillingFromUrl() {
  const searchParams = useSearchParams();
  const filters = useMemo(() => filtersFromSearchParams(searchParams), [searchParams]);
  const onFiltersChange = useCallback((next: HistoryFilters) => {
    const search = filtersToSearch(next);
    // Next.js syncs useSearchParams with the History API, without a round trip to the server.
    window.history.pushState(null, "", search ? `?${search}` : window.location.pathname);
  }, []);
  return <Billing filters={filters} onFiltersChange={onFiltersChange} />;
}
