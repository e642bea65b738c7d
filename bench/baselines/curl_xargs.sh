#!/usr/bin/env bash
# Baseline (a): one `curl` per window, 64 at a time with `xargs -P`: the tutorial's request in a loop.
#
#   ACCESS_TOKEN=... API_KEY=... ORG_ID=... SANDBOX_NAME=... \
#     bench/baselines/curl_xargs.sh BASE_URL BODIES ANSWERS [PARALLEL]
#
# BODIES holds one request body per line, exactly what `backfill` sends; every answer (the run
# object, with its id) is appended to ANSWERS, one line each. A failed request fails the script.
set -euo pipefail
base_url=$1 bodies=$2 answers=$3 parallel=${4:-64}
xargs -d '\n' -P "$parallel" -I '{}' \
  curl --silent --show-error --fail-with-body --noproxy '*' --max-time 60 \
    -X POST "$base_url/runs" \
    -H "Authorization: Bearer $ACCESS_TOKEN" \
    -H "x-api-key: $API_KEY" \
    -H "x-gw-ims-org-id: $ORG_ID" \
    -H "x-sandbox-name: $SANDBOX_NAME" \
    -H 'Content-Type: application/json' \
    --data-raw '{}' --write-out '\n' \
  <"$bodies" >>"$answers"
