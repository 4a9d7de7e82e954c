#!/bin/sh
# SPDX-License-Identifier: MIT
# skel.sh CLANG BPFTOOL OUT NAME SOURCE [CLANG ARGS...]: the one BPF recipe.
# Compiles SOURCE with clang (-target bpf, CO-RE, BTF), links it with
# `bpftool gen object` and writes its skeleton header (struct NAME) to OUT.
set -eu
clang=$1 bpftool=$2 out=$3 name=$4 src=$5
shift 5
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
"$clang" "$@" -c "$src" -o "$tmp/$name.tmp.o"
"$bpftool" gen object "$tmp/$name.o" "$tmp/$name.tmp.o"
"$bpftool" gen skeleton "$tmp/$name.o" name "$name" > "$tmp/$name.skel.h"
mv "$tmp/$name.skel.h" "$out"
