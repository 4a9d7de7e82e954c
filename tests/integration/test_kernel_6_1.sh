#!/bin/bash
# SPDX-License-Identifier: MIT
# The same CO-RE objects, built against this machine's kernel, load and
# attach under Debian 12's own 6.1 kernel (qemu): `sonded --check` there
# must attach the sampler, every lifecycle hook, and see samples; and again
# with the unwinder plugins required, whose BPF objects must load there too.
set -u
skip() {
	if [ "${CI:-}" = true ]; then echo "FAIL: would skip under CI=true: $1"; exit 1; fi
	echo "SKIP: $1"; exit 77
}
[ "$(id -u)" = 0 ] || skip "needs root (apt-get and qemu set-up)"
runner=$SONDE_SOURCE_DIR/../shared/kernels/run-on-kernel
[ -x "$runner" ] || skip "no $runner (the shared/ folder beside the repo)"

out=$("$runner" --timeout 240 -- "$SONDE_BUILD_DIR/core/sonded" --check --hz 99 2>&1)
rc=$?
echo "$out"
[ $rc = 0 ] || { echo "FAIL: sonded --check exited $rc under the 6.1 kernel"; exit 1; }
echo "$out" | grep -q 'guest kernel 6\.1\.' || { echo "FAIL: the guest did not run a 6.1 kernel"; exit 1; }
echo "$out" | grep -q 'lifecycle hooks attached: 3 of 3' || { echo "FAIL: not every lifecycle hook attached"; exit 1; }
echo "$out" | grep -q 'check: ok' || { echo "FAIL: no samples under 6.1"; exit 1; }
kernel=$(echo "$out" | sed -n 's/.*guest kernel //p')

plugins=$SONDE_BUILD_DIR/plugins
script=$(mktemp /tmp/sonde-6.1-XXXXXX.lua)
trap 'rm -f "$script"' EXIT
cat >"$script" <<'LUA'
plugin "unwind-native" { required = true, cache_dir = "" }
plugin "unwind-python" { required = true }
plugin "unwind-jvm" { required = true }
unwinders { "unwind-native" }
LUA
files=(--file "$script")
for p in unwind-native unwind-python unwind-jvm; do
	files+=(--file "$plugins/$p/sonde-$p.so")
done
out=$("$runner" --timeout 240 "${files[@]}" -- "$SONDE_BUILD_DIR/core/sonded" --check --hz 99 \
	--script "$script" --plugin-dir "$plugins" 2>&1)
rc=$?
echo "$out"
[ $rc = 0 ] || { echo "FAIL: sonded --check with the unwinder plugins exited $rc under 6.1"; exit 1; }
for p in unwind-native unwind-python unwind-jvm; do
	echo "$out" | grep -q "plugin $p loaded" ||
		{ echo "FAIL: plugin $p did not load under 6.1"; exit 1; }
done
echo "$out" | grep -q 'check: ok' || { echo "FAIL: no samples with the plugins under 6.1"; exit 1; }
echo "ok: sonded and the unwinder plugins load, attach and sample under $kernel"
