/**
 * The history filters and their place in the URL (`?type=usage&status=pending`),
 * so that a filtered view can be linked and reloaded. Values the API does not
 * know are ignored rather than sent, as a hand-edited link should not break the page.
 */
import type { TransactionStatus, TransactionType } from "@/api/client";

import { STATUS_LABELS } from "./format";

/**
 * The type filter's choices, in the order offered, in the plural a list of entries reads in. Every
 * type is offered, expirations too: they are the one entry a customer did not cause and the one most
 * likely to surprise them ("where did my credits go?"), so "Expired credits" answers that in one
 * step, and the service filters by it like any other type. Refunds, returned credits (reversals) and
 * adjustments are offered too, in the contract's order: each answers a question a customer asks ("was
 * I refunded?", "did I get the credits of that failed generation back?", "what did support change?").
 * A Record, so that a type added to the contract fails the typecheck here until someone decides how
 * (or whether) to offer it.
 */
export const TYPE_FILTER_LABELS: Record<TransactionType, string> = {
  purchase: "Purchases",
  usage: "Usage",
  grant: "Free credits",
  refund: "Refunds",
  reversal: "Returned credits",
  adjustment: "Adjustments",
  expiration: "Expired credits",
};

export interface HistoryFilters {
  type?: TransactionType;
  status?: TransactionStatus;
}

// A type counts in the URL only when the filter offers it, so a link never selects a filter the
// select cannot show.
function isType(value: string | null): value is TransactionType {
  return value !== null && Object.hasOwn(TYPE_FILTER_LABELS, value);
}

function isStatus(value: string | null): value is TransactionStatus {
  return value !== null && Object.hasOwn(STATUS_LABELS, value);
}

export function filtersFromSearchParams(params: Pick<URLSearchParams, "get">): HistoryFilters {
  const type = params.get("type");
  const status = params.get("status");
  return {
    ...(isType(type) ? { type } : {}),
    ...(isStatus(status) ? { status } : {}),
  };
}

/** The query string for the filters, without "?" ("" when none is set). */
export function filtersToSearch(filters: HistoryFilters): string {
  const params = new URLSearchParams();
  if (filters.type) params.set("type", filters.type);
  if (filters.status) params.set("status", filters.status);
  return params.toString();
}

export function hasFilters(filters: HistoryFilters): boolean {
  return Boolean(filters.type || filters.status);
}

export function parseTypeChoice(value: string): TransactionType | undefined {
  return isType(value) ? value : undefined;
}

export function parseStatusChoice(value: string): TransactionStatus | undefined {
  return isStatus(value) ? value : undefined;
}
