#!/bin/sh
# SPDX-License-Identifier: MIT
# gen-vmlinux.sh BPFTOOL BTF OUT [PINNED]: writes vmlinux.h for the BPF build,
# from a pinned copy when one is given, else from the kernel's BTF.
set -eu
bpftool=$1 btf=$2 out=$3 pinned=${4:-}
if [ -n "$pinned" ]; then
	cp "$pinned" "$out"
	exit 0
fi
if [ ! -r "$btf" ]; then
	echo "error: $btf is missing: this kernel has no BTF (CONFIG_DEBUG_INFO_BTF=y)." >&2
	echo "       Build on a kernel with BTF, or pass -Dvmlinux_h=PATH to a pinned vmlinux.h." >&2
	exit 1
fi
"$bpftool" btf dump file "$btf" format c > "$out.tmp"
mv "$out.tmp" "$out"
