-- wrk script for BENCHMARKS.md "Storefront": every request is a new
-- storefront order (POST /api/v1/orders) with its own external_id and
-- Idempotency-Key, so the daemon accepts each one durably (201) instead
-- of replaying a first answer.
--
--   wrk -t2 -c16 -d20s --latency -H 'Authorization: Bearer <storefront token>' \
--       -s bench/orders.lua http://127.0.0.1:PORT/api/v1/orders -- <run id> <skus>
--
-- Orders name one unit of one of <skus> SKUs `bench-000`...; short ones
-- are back-ordered. bench/storefront_bench.py runs this.

local threads = 0

function setup(thread)
  threads = threads + 1
  thread:set("tid", threads)
end

function init(args)
  run = args[1] or tostring(os.time())
  skus = tonumber(args[2] or "100")
  n = 0
  base = {}
  for k, v in pairs(wrk.headers) do base[k] = v end
  base["Content-Type"] = "application/json"
end

local ship_to = '"ship_to":{"name":"Ada Lovelace","street1":"12 Market St","street2":null,'
  .. '"city":"San Francisco","region":"CA","postal_code":"94105","country":"US",'
  .. '"phone":null,"email":null}'

function request()
  n = n + 1
  local ext = string.format("%s-%d-%d", run, tid, n)
  local sku = string.format("bench-%03d", (n * 7 + tid) % skus)
  local body = string.format(
    '{"channel":"web","external_id":"%s","lines":[{"sku":"%s","quantity":1}],%s,'
      .. '"service":"standard","when_short":"backorder"}', ext, sku, ship_to)
  local h = {}
  for k, v in pairs(base) do h[k] = v end
  h["Idempotency-Key"] = ext
  return wrk.format("POST", nil, h, body)
end
