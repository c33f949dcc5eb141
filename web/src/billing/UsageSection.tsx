"use client";

/**
 * Credits spent per day (the last 30), week (12) or month (12), stacked by the usage's `model` when
 * its metadata names one, from `GET /api/usage/summary`. The chart is recharts (SVG, so each bar is
 * an element of its own); the same numbers are a table beside it, always there for a screen reader
 * and shown to everyone by "Show as table".
 */
import { useQuery } from "@tanstack/react-query";
import { lazy, Suspense, useId, useMemo, useState } from "react";

import type { TransactionsApi, UsageGranularity, UsageSummary } from "@/api/client";

import styles from "./billing.module.css";
import { formatBucket, formatCredits } from "./format";
import { billingKeys, unwrap, viewerTimeZone } from "./queries";
import { LoadingPanel, SectionFailure, SkeletonLines } from "./Skeletons";

// recharts is most of the page's script: it loads after the rest, so that the balance and the
// history never wait for it, while the table already holds the same numbers.
const UsageChart = lazy(() => import("./UsageChart"));

export const PERIODS: Record<UsageGranularity, { label: string; span: string }> = {
  day: { label: "30 days", span: "used in the last 30 days" },
  week: { label: "12 weeks", span: "used in the last 12 weeks" },
  month: { label: "12 months", span: "used in the last 12 months" },
};

/** Ten value colours, then `other` and `none` in greys; each at least 3:1 on the card's white. */
const VALUE_COLOURS = [
  "#2f4fd6",
  "#0b7a6e",
  "#b5541b",
  "#7a3fb8",
  "#a3285e",
  "#3d7a18",
  "#006685",
  "#8a6200",
  "#c0392b",
  "#44506a",
];
const OTHER_COLOUR = "#6b7382";
const NONE_COLOUR = "#8b93a1";

export interface ChartSeries {
  key: string;
  name: string;
  colour: string;
}

export interface ChartRow {
  start: string;
  credits: number;
  [series: string]: number | string;
}

/**
 * The bars to draw: one per series that spent anything when the summary splits by a key and some of
 * its values did (a series of zeros would only add a colour to the legend), else one bar of the
 * bucket's credits (a split of only `other` and `none` says nothing a single bar does not).
 */
export function chartOf(summary: UsageSummary): { series: ChartSeries[]; rows: ChartRow[] } {
  const spent = summary.series.map((_, index) => summary.buckets.some((bucket) => (bucket.split[index] ?? 0) !== 0));
  const stacked = summary.series.some((entry, index) => entry.kind === "value" && spent[index]);
  if (!stacked) {
    return {
      series: [{ key: "credits", name: "Credits", colour: VALUE_COLOURS[0]! }],
      rows: summary.buckets.map((bucket) => ({ start: bucket.start, credits: bucket.credits })),
    };
  }
  let values = 0;
  const series = summary.series.flatMap((entry, index) => {
    if (entry.kind === "value") values += 1; // a value keeps its colour whether or not it is drawn
    if (!spent[index]) return [];
    return [
      {
        index,
        key: `s${index}`,
        name: entry.kind === "value" ? entry.name : entry.kind === "other" ? "Other models" : "No model",
        colour:
          entry.kind === "value"
            ? VALUE_COLOURS[(values - 1) % VALUE_COLOURS.length]!
            : entry.kind === "other"
              ? OTHER_COLOUR
              : NONE_COLOUR,
      },
    ];
  });
  const rows = summary.buckets.map((bucket) => {
    const row: ChartRow = { start: bucket.start, credits: bucket.credits };
    for (const entry of series) row[entry.key] = bucket.split[entry.index] ?? 0;
    return row;
  });
  return { series: series.map(({ index: _, ...entry }) => entry), rows };
}

export function UsageSection({ api }: { api: TransactionsApi }) {
  const [granularity, setGranularity] = useState<UsageGranularity>("day");
  const [asTable, setAsTable] = useState(false);
  const headingId = useId();
  const tableId = useId();
  const timeZone = viewerTimeZone();
  const usage = useQuery({
    queryKey: billingKeys.usage(granularity, timeZone),
    queryFn: ({ signal }) =>
      api.getUsageSummary({ granularity, group_by: "metadata.model", tz: timeZone }, signal).then(unwrap),
    // the chart keeps its place while the next period is on its way
    placeholderData: (previous) => previous,
  });
  const summary = usage.data;
  const chart = useMemo(() => (summary ? chartOf(summary) : null), [summary]);
  const shown = summary?.granularity ?? granularity;
  const nothingUsed = summary ? summary.buckets.every((bucket) => bucket.credits === 0) : false;

  return (
    <section
      className={styles.usage}
      aria-labelledby={headingId}
      aria-busy={usage.isPlaceholderData}
      data-testid="usage"
    >
      <div className={styles.sectionHeader}>
        <h2 id={headingId} className={styles.sectionTitle}>
          Credits used
        </h2>
        <div className={styles.segmented} role="group" aria-label="Period">
          {(Object.keys(PERIODS) as UsageGranularity[]).map((value) => (
            <button
              key={value}
              type="button"
              aria-pressed={granularity === value}
              onClick={() => setGranularity(value)}
            >
              {PERIODS[value].label}
            </button>
          ))}
        </div>
      </div>
      {usage.isPending && (
        <LoadingPanel className={styles.chartSkeleton} testId="usage-loading" label="Loading your usage…">
          <SkeletonLines count={1} shape={styles.skeletonChart} />
        </LoadingPanel>
      )}
      {usage.isError && !summary && (
        <SectionFailure testId="usage-error" what="your usage" error={usage.error} onRetry={() => void usage.refetch()} />
      )}
      {summary && nothingUsed && (
        <p className={styles.usageEmpty} data-testid="usage-empty">
          No credits used in the last {PERIODS[shown].label}.
        </p>
      )}
      {summary && chart && !nothingUsed && (
        <>
          <p className={styles.usageTotal} data-testid="usage-total">
            <span className={styles.usageTotalValue}>{formatCredits(summary.total)}</span> credits{" "}
            {PERIODS[shown].span}
          </p>
          {!asTable && (
            <div className={styles.chart} data-testid="usage-chart">
              <Suspense fallback={<ChartLoading />}>
                <UsageChart
                  series={chart.series}
                  rows={chart.rows}
                  granularity={shown}
                  label={`Credits used ${PERIODS[shown].span}; the same numbers are in the table below.`}
                />
              </Suspense>
            </div>
          )}
          {!asTable && chart.series.length > 1 && (
            <ul className={styles.legend} aria-hidden="true">
              {chart.series.map((entry) => (
                <li key={entry.key}>
                  <span className={styles.legendSwatch} style={{ background: entry.colour }} />
                  {entry.name}
                </li>
              ))}
            </ul>
          )}
          <button
            type="button"
            className={`${styles.linkButton} ${styles.tableToggle}`}
            aria-expanded={asTable}
            aria-controls={tableId}
            onClick={() => setAsTable((now) => !now)}
          >
            {asTable ? "Show as chart" : "Show as table"}
          </button>
          {/* Always there for a screen reader; on screen only when asked for. */}
          <div id={tableId} className={asTable ? styles.tableWrap : styles.visuallyHidden}>
            <UsageTable summary={summary} series={chart.series} rows={chart.rows} />
          </div>
        </>
      )}
    </section>
  );
}

function ChartLoading() {
  return <span className={`${styles.skeleton} ${styles.chartFill}`} aria-hidden="true" />;
}

function UsageTable({ summary, series, rows }: { summary: UsageSummary; series: ChartSeries[]; rows: ChartRow[] }) {
  const granularity = summary.granularity;
  const split = series.length > 1;
  return (
    <table className={styles.dataTable} data-testid="usage-table">
      <caption className={styles.tableCaption}>Credits used {PERIODS[granularity].span}</caption>
      <thead>
        <tr>
          <th scope="col">{granularity === "day" ? "Day" : granularity === "week" ? "Week" : "Month"}</th>
          {split &&
            series.map((entry) => (
              <th key={entry.key} scope="col" className={styles.numeric}>
                {entry.name}
              </th>
            ))}
          <th scope="col" className={styles.numeric}>
            Credits
          </th>
        </tr>
      </thead>
      <tbody>
        {rows.map((row) => (
          <tr key={row.start} data-testid="usage-row" data-start={row.start}>
            <th scope="row">{formatBucket(row.start, granularity)}</th>
            {split &&
              series.map((entry) => (
                <td key={entry.key} className={styles.numeric}>
                  {formatCredits(Number(row[entry.key]))}
                </td>
              ))}
            <td className={styles.numeric}>{formatCredits(row.credits)}</td>
          </tr>
        ))}
      </tbody>
      <tfoot>
        <tr>
          <th scope="row">Total</th>
          {split &&
            series.map((entry) => (
              <td key={entry.key} className={styles.numeric}>
                {formatCredits(rows.reduce((sum, row) => sum + Number(row[entry.key]), 0))}
              </td>
            ))}
          <td className={styles.numeric}>{formatCredits(summary.total)}</td>
        </tr>
      </tfoot>
    </table>
  );
}
