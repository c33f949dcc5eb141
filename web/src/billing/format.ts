/**
 * How ledger values read on the billing page. Every function takes the locale
 * (and the time zone) as an argument so tests can pin them; the page passes
 * undefined, which means the viewer's own.
 */
import type { TransactionStatus, TransactionType } from "@/api/client";

const MINUS = "\u2212"; // a real minus sign, not a hyphen

/**
 * The badge of each type, in the customer's words: a grant is the credits we gave them ("Free
 * credits", whatever its lot's category), an expiration the credits of a lot that ran out ("Expired").
 */
export const TYPE_LABELS: Record<TransactionType, string> = {
  purchase: "Purchase",
  usage: "Usage",
  grant: "Free credits",
  expiration: "Expired",
};

/**
 * Whether a zero amount of this type reads as an em dash: usage normally costs no money, a grant is
 * free by definition and an expiration refunds nothing, so "$0.00" would only be noise. A purchase
 * of $0.00 is shown as such, as it is unusual and worth seeing.
 */
const ZERO_AMOUNT_AS_DASH: Record<TransactionType, boolean> = {
  purchase: false,
  usage: true,
  grant: true,
  expiration: true,
};

export const STATUS_LABELS: Record<TransactionStatus, string> = {
  completed: "Completed",
  pending: "Pending",
  failed: "Failed",
};

/** 1587 -> "1,587" */
export function formatCredits(credits: number, locale?: string): string {
  return new Intl.NumberFormat(locale, { maximumFractionDigits: 0 }).format(credits);
}

/** 500 -> "+500", -20 -> "−20" (U+2212), with the locale's grouping. */
export function formatSignedCredits(credits: number, locale?: string): string {
  const magnitude = formatCredits(Math.abs(credits), locale);
  if (credits > 0) return `+${magnitude}`;
  if (credits < 0) return `${MINUS}${magnitude}`;
  return magnitude;
}

/** The start of the balance card's expiry line: 100 -> "100 credits expire", 1 -> "1 credit expires". */
export function formatExpiringCredits(credits: number, locale?: string): string {
  const rule = new Intl.PluralRules(locale).select(credits);
  return `${formatCredits(credits, locale)} ${rule === "one" ? "credit expires" : "credits expire"}`;
}

/**
 * "9.99" -> "$9.99". The amount stays a decimal string all the way to
 * Intl.NumberFormat, which formats strings exactly (no binary floating point).
 * Usage, grants and expirations normally move no money: their "0.00" reads as an em dash.
 */
export function formatAmount(amount: string, type: TransactionType, locale?: string): string {
  if (ZERO_AMOUNT_AS_DASH[type] && /^0+(\.0+)?$/.test(amount)) return "\u2014";
  return new Intl.NumberFormat(locale, { style: "currency", currency: "USD" }).format(
    amount as Intl.StringNumericLiteral,
  );
}

/** The moment in the viewer's locale and time zone: "Jun 12, 2025, 9:30 AM". */
export function formatDateTime(iso: string, locale?: string, timeZone?: string): string {
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return iso;
  return new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeStyle: "short", timeZone }).format(moment);
}

/**
 * The exact moment in UTC, as the service recorded it (microseconds
 * included): "2025-06-12T09:30:15.123456Z" -> "2025-06-12 09:30:15.123456 UTC".
 */
export function formatUtc(iso: string): string {
  const match = /^(\d{4}-\d{2}-\d{2})T(\d{2}:\d{2}:\d{2}(?:\.\d+)?)Z$/.exec(iso);
  if (match) return `${match[1]} ${match[2]} UTC`;
  const moment = new Date(iso);
  if (Number.isNaN(moment.getTime())) return iso;
  return `${moment.toISOString().replace("T", " ").replace("Z", "")} UTC`;
}
