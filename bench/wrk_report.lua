-- wrk: print the run's figures as one JSON line, read by bench/common.py run_wrk().
-- Latencies are in microseconds; bytes include the response headers.
-- Each thread is numbered (`id`, from 1), for the scripts that load this file.

local threads = 0
function setup(thread)
   threads = threads + 1
   thread:set("id", threads)
end

function done(summary, latency, requests)
   local e = summary.errors
   io.write(string.format(
      'WRK_JSON {"requests": %d, "bytes": %d, "duration_us": %d, "connect": %d, "read": %d, '
         .. '"write": %d, "timeout": %d, "status": %d, "p50_us": %.0f, "p99_us": %.0f, "max_us": %.0f}\n',
      summary.requests, summary.bytes, summary.duration, e.connect, e.read, e.write, e.timeout, e.status,
      latency:percentile(50.0), latency:percentile(99.0), latency.max))
end
