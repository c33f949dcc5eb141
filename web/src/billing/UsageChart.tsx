"use client";

/**
 * The usage chart itself, recharts' SVG: loaded on its own (see UsageSection), as it is most of the
 * page's script. Each bar is an element that says what it counts.
 */
import { Bar, BarChart, CartesianGrid, Rectangle, Tooltip, XAxis, YAxis, type BarShapeProps } from "recharts";

import type { UsageGranularity } from "@/api/client";

import { formatBucket, formatBucketTick, formatCredits } from "./format";
import type { ChartRow, ChartSeries } from "./UsageSection";

export default function UsageChart({
  series,
  rows,
  granularity,
  label,
}: {
  series: ChartSeries[];
  rows: ChartRow[];
  granularity: UsageGranularity;
  label: string;
}) {
  return (
    <BarChart
      data={rows}
      responsive
      style={{ width: "100%", height: "100%" }}
      margin={{ top: 8, right: 8, bottom: 0, left: 0 }}
      stackOffset="sign"
      accessibilityLayer
      title={label}
    >
      <CartesianGrid vertical={false} stroke="var(--border)" />
      <XAxis
        dataKey="start"
        tickFormatter={(start: string) => formatBucketTick(start, granularity)}
        tickLine={false}
        minTickGap={12}
        fontSize={12}
      />
      <YAxis
        allowDecimals={false}
        tickFormatter={(value: number) => formatCredits(value)}
        tickLine={false}
        axisLine={false}
        width={56}
        fontSize={12}
      />
      <Tooltip
        labelFormatter={(start) => formatBucket(String(start), granularity)}
        formatter={(value) => formatCredits(Number(value))}
        cursor={{ fill: "var(--surface-muted)" }}
      />
      {series.map((entry) => (
        <Bar
          key={entry.key}
          dataKey={entry.key}
          name={entry.name}
          stackId="usage"
          fill={entry.colour}
          isAnimationActive={false}
          shape={(props: BarShapeProps) => (
            // Each bar says what it counts, so that a test (or a tool) can read the chart back.
            <g
              data-testid="usage-bar"
              data-start={props.payload?.start}
              data-series={entry.name}
              data-credits={props.payload?.[entry.key]}
            >
              <Rectangle {...props} />
            </g>
          )}
        />
      ))}
    </BarChart>
  );
}
