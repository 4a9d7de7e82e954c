/* SPDX-License-Identifier: MIT */
/*
 * Lua values <-> msgpack, the one place that decides how a script's value
 * looks on the wire (export messages, control replies) and how a msgpack
 * document looks to a script.
 *
 * Lua -> msgpack (sonde_lua_to_msgpack):
 *   nil                 -> nil
 *   boolean             -> bool
 *   integer subtype     -> int, smallest encoding (positive fixint .. int64;
 *                          non-negative values use the uint formats)
 *   float subtype       -> float64, always, even 1.0, -0.0, NaN and inf
 *                          (Lua 5.4 keeps the integer/float distinction, so
 *                          the script decides: 1 is an int, 1.0 a float)
 *   string              -> str, byte for byte. Lua strings are byte strings:
 *                          NULs and bytes that are not valid UTF-8 are still
 *                          sent as str, unchanged; receivers must not assume
 *                          valid UTF-8.
 *   table, keys exactly 1..n (n >= 1, no holes, nothing else)
 *                       -> array of n elements, in order
 *   empty table         -> empty map (a script cannot say "empty array";
 *                          receivers should treat {} and [] alike)
 *   any other table     -> map; every key must be a string or an integer,
 *                          any other key is an error naming its type. Map
 *                          order is unspecified (lua_next order).
 *   function, userdata, thread -> error naming the type and the path,
 *                          e.g. "labels.team: cannot send a function"
 * Tables are read raw: metatables (__index, __pairs) are ignored. Nesting
 * deeper than SONDE_LUA_MSGPACK_MAX_DEPTH tables is an error, and so is a
 * table that contains itself (a cycle); the same table reached twice by
 * different keys is fine and is encoded twice.
 *
 * msgpack -> Lua (sonde_msgpack_to_lua):
 *   nil -> nil; bool -> boolean; str and bin -> string;
 *   int -> integer; uint above INT64_MAX -> float (rounded: Lua has no
 *   uint64, and a float keeps the magnitude);
 *   float32, float64 -> float;
 *   array -> table 1..n; map -> table, duplicate keys: the last one wins.
 *   Map keys must be str, bin or an int that fits int64 (the keys Lua ->
 *   msgpack makes); a nil, bool, float, array, map or ext key, or a uint
 *   key above INT64_MAX, is an error. ext anywhere is an error. Nesting
 *   deeper than SONDE_LUA_MSGPACK_MAX_DEPTH is an error.
 *   A nil inside a container is dropped by Lua itself: {"a": nil} becomes
 *   {} and [1, nil, 3] a table with keys 1 and 3, which converts back as a
 *   map.
 * So msgpack -> Lua -> msgpack changes: bin to str, float32 to float64,
 * [] to {}, a map whose keys are exactly 1..n to an array, nils as above,
 * and map order. A second round trip changes nothing but map order
 * (tests/fuzz/fuzz-msgpack-lua.c checks it).
 *
 * Paths in error messages: string keys joined by '.', integer keys as
 * [n], e.g. "stacks[2].labels.pid"; no path (and no "path: " prefix) for
 * the top-level value. err is always NUL-terminated when errlen > 0; it may
 * be NULL when errlen is 0.
 *
 * Threading: both functions use only L and the given packer/object; one
 * thread per lua_State, as Lua requires. Neither raises a Lua error except
 * on memory exhaustion inside Lua itself (lua_createtable, lua_pushlstring),
 * which propagates as a Lua error like any allocation failure in the
 * caller's protected call.
 */
#ifndef SONDE_LUA_MSGPACK_H
#define SONDE_LUA_MSGPACK_H

#include <stddef.h>

#include <lua.h>
#include <msgpack.h>

/* Tables (or msgpack containers) nested deeper than this are refused. */
#define SONDE_LUA_MSGPACK_MAX_DEPTH 32

/*
 * Packs the value at index into pk. The Lua stack is left as it was.
 * Returns 0, or:
 *   -EINVAL  a value or key that cannot be sent (err says which and where)
 *   -ELOOP   a table that contains itself
 *   -E2BIG   nesting deeper than SONDE_LUA_MSGPACK_MAX_DEPTH, or a string
 *            or table too large for msgpack (2^32 - 1)
 *   -ENOMEM  the packer's writer failed, or the Lua stack could not grow
 * On error the bytes already written to pk are a partial document: the
 * caller discards them (for an sbuffer, reset its size to what it was).
 */
int sonde_lua_to_msgpack(lua_State *L, int index, msgpack_packer *pk, char *err, size_t errlen);

/*
 * Pushes obj converted to a Lua value. Returns 0 with exactly one value
 * pushed, or a negative errno with nothing pushed:
 *   -EINVAL  an ext, or a map key that is not str, bin or int64
 *   -E2BIG   nesting deeper than SONDE_LUA_MSGPACK_MAX_DEPTH
 *   -ENOMEM  the Lua stack could not grow
 * obj is only read; it belongs to the caller (usually a msgpack_zone).
 */
int sonde_msgpack_to_lua(lua_State *L, const msgpack_object *obj, char *err, size_t errlen);

/*
 * Unpacks the first document in data[0..len) into out (initialized by the
 * caller with msgpack_unpacked_init, destroyed by the caller) and sets
 * *used to its length; bytes after it are the caller's business. Use this,
 * not msgpack_unpack_next(), on bytes from outside the process:
 * msgpack-c allocates a container's declared size before reading its
 * elements, so five bytes can ask for 64 GB. This first walks the bytes
 * and refuses a container declaring more elements than there are bytes
 * left (every element takes at least one), nesting deeper than
 * SONDE_LUA_MSGPACK_MAX_DEPTH, a truncated document and the byte 0xc1.
 * 0, -EINVAL (err says what and at which offset), -E2BIG (too deep) or
 * -ENOMEM.
 */
int sonde_msgpack_unpack(msgpack_unpacked *out, const void *data, size_t len, size_t *used,
			 char *err, size_t errlen);

#endif /* SONDE_LUA_MSGPACK_H */
