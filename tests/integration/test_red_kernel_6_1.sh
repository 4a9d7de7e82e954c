#!/bin/sh
# SPDX-License-Identifier: MIT
# red-metrics under Debian 12's own 6.1 kernel (qemu): inside the guest,
# busybox's httpd serves and its wget fetches an exact number of pages
# (tests/fixtures/red/guest-httpd.sh); sonded must count every one, by route
# and status, from the same CO-RE object built against this machine's kernel,
# and tag every request's thread (task storage) for the profiles.
set -u
skip() {
	if [ "${CI:-}" = true ]; then echo "FAIL: would skip under CI=true: $1"; exit 1; fi
	echo "SKIP: $1"; exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root (apt-get and qemu set-up)"
runner=$SONDE_SOURCE_DIR/../shared/kernels/run-on-kernel
[ -x "$runner" ] || skip "no $runner (the shared/ folder beside the repo)"
busybox=/usr/bin/busybox
[ -x $busybox ] || skip "no $busybox (Debian's busybox-static)"

ok=25 missing=3
guest=$SONDE_SOURCE_DIR/tests/fixtures/red/guest-httpd.sh
plugins=$SONDE_BUILD_DIR/plugins/red-metrics
out=$("$runner" --timeout 360 --file "$guest" --file "$plugins/sonde-red-metrics.so" \
	--file "$SONDE_BUILD_DIR/core/sonded" -- \
	$busybox sh "$guest" "$SONDE_BUILD_DIR/core/sonded" "$plugins" $ok $missing 2>&1)
rc=$?
echo "$out"
[ $rc = 0 ] || { echo "FAIL: the guest script exited $rc"; exit 1; }
echo "$out" | grep -q 'guest kernel 6\.1\.' || { echo "FAIL: the guest did not run a 6.1 kernel"; exit 1; }
# 6.1 has no sock_send_length: capture = "auto" falls back to the syscall exits.
echo "$out" | grep -q 'watching HTTP/1.x servers through the syscall exits' ||
	{ echo "FAIL: the plugin does not say it fell back to the syscall exits"; exit 1; }
count() { # route status -> the count sonded gave, or "none"
	echo "$out" | sed -n "s|^http_server_request_duration_seconds_count{service_name=\"busybox\",http_request_method=\"GET\",http_response_status_code=\"$2\",http_route=\"$1\",.*} \([0-9]*\)\$|\1|p" | grep . || echo none
}
got_ok=$(count /index.html 200)
got_missing=$(count /missing 404)
[ "$got_ok" = $ok ] || { echo "FAIL: /index.html 200: $got_ok counted, $ok fetched"; exit 1; }
[ "$got_missing" = $missing ] || { echo "FAIL: /missing 404: $got_missing counted, $missing fetched"; exit 1; }
# Each request's thread (httpd's forked child) was tagged for the profiles:
# task storage made under this kernel too.
untagged=$(echo "$out" | sed -n 's/^sonde_plugin_red_metrics_untagged_threads_total \([0-9]*\)$/\1/p')
[ "$untagged" = 0 ] || { echo "FAIL: $untagged requests' threads not tagged (want 0)"; exit 1; }
echo "ok: under $(echo "$out" | sed -n 's/.*guest kernel //p'), busybox httpd's $ok + $missing requests counted exactly through the syscall exits, every thread tagged"
