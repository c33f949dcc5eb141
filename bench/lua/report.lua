-- Included by every wrk script: at the end, one machine-readable line for bench/run.py.
-- Latencies are wrk's own, in microseconds: from a request's first byte written to its response read.
function done(summary, latency, requests)
  local errors = summary.errors
  io.write(string.format(
    'WRK {"requests":%d,"duration_us":%d,"connect_errors":%d,"read_errors":%d,"write_errors":%d,' ..
    '"timeouts":%d,"non_2xx":%d,"mean_us":%.1f,"p50_us":%d,"p90_us":%d,"p99_us":%d,"max_us":%d}\n',
    summary.requests, summary.duration, errors.connect, errors.read, errors.write, errors.timeout,
    errors.status, latency.mean, latency:percentile(50), latency:percentile(90), latency:percentile(99),
    latency.max))
end
