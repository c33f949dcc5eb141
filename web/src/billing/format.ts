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
 * A refund is money back for a purchase, in the customer's own word ("Refund"); a reversal is a
 * generation's credits coming back, as after one that failed ("Credits returned": "reversal" is the
 * ledger's word, not theirs); an adjustment is support's correction, its reason in the description
 * ("Adjustment": one plain word for either sign, where "Credit" or "Debit" would change with it).
 */
export const TYPE_LABELS: Record<TransactionType, string> = {
  purchase: "Purchase",
  usage: "Usage",
  grant: "Free credits",
  refund: "Refund",
  reversal: "Credits returned",
  adjustment: "Adjustment",
  expiration: "Expired",
};

/**
 * Whether a zero amount of this type reads as an em dash: usage normally costs no money, a grant is
 * free by definition, a reversal or an adjustment moves credits and never money, and an expiration
 * refunds nothing, so "$0.00" would only be noise. A purchase of $0.00 is shown as such, as it is
 * unusual and worth seeing. So is a refund of $0.00 (credits taken back with no money returned):
 * the dollars that came back are the one thing a customer reads a refund for, and "$0.00" says
 * plainly "none", where a dash would look like "not applicable" and hide it.
 */
const ZERO_AMOUNT_AS_DASH: Record<TransactionType, boolean> = {
  purchase: false,
  usage: true,
  grant: true,
  refund: false,
  reversal: true,
  adjustment: true,
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
 * Usage, grants, reversals, adjustments and expirations normally move no money: their "0.00" reads
 * as an em dash. A refund's amount is the dollars given back, shown as they are, $0.00 included.
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

/** A calendar date of the service ("2026-11-30"), read as a date and never shifted by a time zone. */
function calendarDate(day: string): Date | null {
  const moment = new Date(`${day}T00:00:00Z`);
  return Number.isNaN(moment.getTime()) ? null : moment;
}

export type BucketGranularity = "day" | "week" | "month";

/** A usage bucket on the chart's axis: "Nov 30" (a day, or the Monday a week starts on), "Nov" (a month). */
export function formatBucketTick(start: string, granularity: BucketGranularity, locale?: string): string {
  const date = calendarDate(start);
  if (!date) return start;
  const options: Intl.DateTimeFormatOptions =
    granularity === "month" ? { month: "short", timeZone: "UTC" } : { month: "short", day: "numeric", timeZone: "UTC" };
  return new Intl.DateTimeFormat(locale, options).format(date);
}

/** A usage bucket in full: "Nov 30, 2026", "Week of Nov 24, 2026", "November 2026". */
export function formatBucket(start: string, granularity: BucketGranularity, locale?: string): string {
  const date = calendarDate(start);
  if (!date) return start;
  if (granularity === "month") {
    return new Intl.DateTimeFormat(locale, { month: "long", year: "numeric", timeZone: "UTC" }).format(date);
  }
  const day = new Intl.DateTimeFormat(locale, { dateStyle: "medium", timeZone: "UTC" }).format(date);
  return granularity === "week" ? `Week of ${day}` : day;
}

/** "2026-11" -> "November 2026". */
export function formatMonth(month: string, locale?: string): string {
  return formatBucket(`${month}-01`, "month", locale);
}

/** The last `count` months in the viewer's time zone, the current one first: ["2026-12", "2026-11", ...]. */
export function recentMonths(now: Date, timeZone?: string, count = 12): string[] {
  const parts = new Intl.DateTimeFormat("en-US", { year: "numeric", month: "numeric", timeZone }).formatToParts(now);
  const year = Number(parts.find((part) => part.type === "year")?.value);
  const month = Number(parts.find((part) => part.type === "month")?.value); // 1-12
  return Array.from({ length: count }, (_, back) => {
    const index = year * 12 + (month - 1) - back;
    return `${Math.floor(index / 12)}-${String((index % 12) + 1).padStart(2, "0")}`;
  });
}
