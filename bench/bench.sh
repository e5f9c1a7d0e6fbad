#!/usr/bin/env bash
# bench/bench.sh — sslctx against a C reference doing the same OpenSSL work (issue 8).
#
#   bench/bench.sh                 full run (about 5 minutes on 2 quiet cores)
#   BENCH_QUICK=1 bench/bench.sh   smoke run (~1 minute; its callgrind spans 5 handshakes: imprecise)
#
# Builds the module (make LUA=$BENCH_LUA) and the C reference (bench/ref.c), makes the
# benchmark PKI (bench/pki.sh -> build/bench-pki), then for each repetition runs every
# workload twice, module then C (A B A B ...), each run its own process, and finally counts
# instructions per handshake under callgrind.  Prints the report (medians, min-max, the
# per-repetition ratio module/C) and writes it to $BENCH_OUT/report.md.
#
# Environment (defaults in brackets; BENCH_QUICK=1 gives the smaller second values):
#   BENCH_LUA            interpreter [lua5.4]
#   BENCH_REPS           repetitions [11 | 3]
#   BENCH_WORKLOADS      subset [mem_hs mem_hs_vcb mem_hs_mtls mem_hs_resume mem_bulk
#                        sock_hs sock_bulk reconnect mem_idle c10k]; c10k (bench/c10k.sh, its
#                        C10K_* variables) runs once, after the repetitions, and prints its
#                        own table (also in $BENCH_OUT/c10k.md); 1,000 clients under BENCH_QUICK
#   BENCH_HS_N           handshakes per run [600 | 60]; mtls runs half, resume twice as many
#   BENCH_BULK_MIB       MiB per bulk run [512 | 48]
#   BENCH_RECONNECT_N    connections per reconnect run [600 | 60]
#   BENCH_IDLE_N         idle connections [1000 | 100]
#   BENCH_MAX_SECONDS    time bound of one run's loop [15]
#   BENCH_GC             collector mode of the Lua processes (incremental | generational);
#                        unset: the interpreter's default (lua5.4's lua.c: generational)
#   BENCH_CALLGRIND      1 = count instructions, 0 = skip [1]
#   BENCH_CG_LUA=host    run the module side's callgrind runs under bench/luahost.c (the
#                        same Lua 5.4, statically linked with symbols: readable profiles)
#   BENCH_CG_WORKLOADS   [mem_hs mem_hs_vcb mem_hs_mtls mem_hs_resume mem_bulk sock_hs
#                        reconnect | mem_hs]
#   BENCH_CG_N           "SMALL BIG" operations (handshakes, MiB, connections):
#                        per operation = (Ir(BIG) - Ir(SMALL)) / (BIG - SMALL) ["10 90" | "3 8"]
#   BENCH_OUT            output directory [build/bench]
#   BENCH_KEEP_WORKLOADS these workloads also run the module with release_buffers = false
#                        (impl module_keep, right after the module's run) []
#   BENCH_CG_KEEP=1      callgrind counts module_keep too [0]
#   mem_idle also runs LuaSec (loopback TCP pairs; the descriptor limit is raised for it)
#   and the C reference with SSL_MODE_RELEASE_BUFFERS (impl c_release)
#   BENCH_NO_BUILD=1     use the existing build/$BENCH_LUA/sslctx/core.so
#   BENCH_MODULE_SO      measure this core.so instead (a candidate build; no make)
#   BENCH_LUA_DIR        take the Lua front (sslctx.lua, sslctx/socket.lua, sslctx/stream.lua) from here [lua]
set -euo pipefail

cd "$(dirname "$0")/.."
quick=${BENCH_QUICK:-0}
q() { if [ "$quick" = 1 ]; then echo "$2"; else echo "$1"; fi; }

LUA=${BENCH_LUA:-lua5.4}
REPS=${BENCH_REPS:-$(q 11 3)}
WORKLOADS=${BENCH_WORKLOADS:-mem_hs mem_hs_vcb mem_hs_mtls mem_hs_resume mem_bulk sock_hs sock_bulk reconnect mem_idle c10k}
HS_N=${BENCH_HS_N:-$(q 600 60)}
BULK_MIB=${BENCH_BULK_MIB:-$(q 512 48)}
RECONNECT_N=${BENCH_RECONNECT_N:-$(q 600 60)}
IDLE_N=${BENCH_IDLE_N:-$(q 1000 100)}
MAXS=${BENCH_MAX_SECONDS:-15}
CALLGRIND=${BENCH_CALLGRIND:-1}
CG_WORKLOADS=${BENCH_CG_WORKLOADS:-$(q "mem_hs mem_hs_vcb mem_hs_mtls mem_hs_resume mem_bulk sock_hs reconnect" "mem_hs")}
CG_N=${BENCH_CG_N:-$(q "10 90" "3 8")}
OUT=${BENCH_OUT:-build/bench}
PKI=build/bench-pki
RUN_TIMEOUT=$((MAXS * 4 + 60))   # a hung run is killed; its server child exits on its own

command -v "$LUA" >/dev/null || { echo "bench: $LUA not found" >&2; exit 1; }
mkdir -p "$OUT"
started=$(date -u +%Y-%m-%dT%H:%M:%SZ)
load_start=$(cut -d' ' -f1-3 /proc/loadavg)
t_start=$(date +%s)

# ---- build ------------------------------------------------------------------
so=${BENCH_MODULE_SO:-build/$LUA/sslctx/core.so}
if [ "${BENCH_NO_BUILD:-0}" != 1 ] && [ -z "${BENCH_MODULE_SO:-}" ]; then
  make --no-print-directory LUA="$LUA" >/dev/null
fi
[ -f "$so" ] || { echo "bench: $so missing (make LUA=$LUA)" >&2; exit 1; }
# shellcheck disable=SC2046  # pkg-config's flags are meant to split
cc -std=c99 -O2 -g -Wall -Wextra -o "$OUT/ref" bench/ref.c $(pkg-config --cflags --libs openssl)

# A snapshot of the module and its Lua front: the tree may be rebuilt while we run.
snap=$OUT/snap
rm -rf "$snap"
mkdir -p "$snap/cpath/sslctx" "$snap/lua"
cp "$so" "$snap/cpath/sslctx/core.so"
cp -R "${BENCH_LUA_DIR:-lua}/." "$snap/lua/"
export LUA_PATH="$snap/lua/?.lua;$snap/lua/?/init.lua;;"
export LUA_CPATH="$snap/cpath/?.so;;"
unset LUA_PATH_5_2 LUA_PATH_5_3 LUA_PATH_5_4 LUA_CPATH_5_2 LUA_CPATH_5_3 LUA_CPATH_5_4 LUA_INIT LUA_INIT_5_4
export BENCH_REF=$OUT/ref

sh bench/pki.sh "$PKI"

# ---- the machine ------------------------------------------------------------
results=$OUT/results.txt
{
  echo "META started=$started"
  echo "META command=${BENCH_COMMAND:-$(env | grep -E '^BENCH_' | grep -v BENCH_REF= | sort | tr '\n' ' ')bench/bench.sh}"
  echo "META nproc=$(nproc)"
  echo "META cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
  echo "META openssl=$(openssl version)"
  echo "META openssl_module=$("$LUA" -e 'print(require("sslctx").openssl_version())')"
  echo "META lua=$("$LUA" -v 2>&1 | head -n1)"
  echo "META luasec=$("$LUA" -e 'print(require("ssl")._VERSION)' 2>/dev/null || echo none)"
  echo "META git=$(git rev-parse --short HEAD 2>/dev/null)$(git diff --quiet HEAD -- src lua 2>/dev/null || echo '+dirty(src/lua)')"
  echo "META module_sha256=$so $(sha256sum "$snap/cpath/sslctx/core.so" | cut -c1-16), Lua front ${BENCH_LUA_DIR:-lua}"
  echo "META load_start=$load_start"
  echo "META params=reps=$REPS hs_n=$HS_N bulk_mib=$BULK_MIB reconnect_n=$RECONNECT_N idle_n=$IDLE_N max_seconds=$MAXS cg_n=$CG_N cg_lua=${BENCH_CG_LUA:-$LUA} gc=${BENCH_GC:-default}"
} >"$results"

# ---- wall clock: module and C interleaved -----------------------------------
n_for() {
  case $1 in
    mem_hs|mem_hs_vcb|sock_hs) echo "$HS_N" ;;
    mem_hs_mtls) echo $((HS_N / 2)) ;;
    mem_hs_resume) echo $((HS_N * 2)) ;;
    mem_bulk|sock_bulk) echo "$BULK_MIB" ;;
    reconnect) echo "$RECONNECT_N" ;;
    mem_idle) echo "$IDLE_N" ;;
    *) echo "bench: unknown workload $1" >&2; exit 1 ;;
  esac
}

one() {   # one run: rep label, command...
  local rep=$1 line
  shift
  if ! line=$(timeout -k 5 "$RUN_TIMEOUT" "$@" | grep '^RESULT '); then
    echo "bench: failed: $*" >&2
    exit 1
  fi
  echo "rep=$rep $line" >>"$results"
  printf '  %s\n' "$line" | cut -c1-110 >&2
}

for rep in $(seq 1 "$REPS"); do
  echo "== repetition $rep/$REPS (load $(cut -d' ' -f1 /proc/loadavg))" >&2
  for w in $WORKLOADS; do
    [ "$w" = c10k ] && continue   # once, below
    if [ "$w" = reconnect_pool ]; then   # opt-in; bench/reconnect_pool.lua, its own table below
      timeout -k 5 "$RUN_TIMEOUT" "$LUA" bench/reconnect_pool.lua "$PKI" "$RECONNECT_N" "$MAXS" | sed -n "s/^RESULT /POOL rep=$rep RESULT /p" >>"$results"; continue
    fi
    n=$(n_for "$w")
    one "$rep" "$LUA" bench/run.lua "$w" "$PKI" "$n" "$MAXS"
    if [ "$w" = reconnect ]; then
      one "$rep" "$LUA" bench/run.lua reconnect_luasec "$PKI" "$n" "$MAXS"
    fi
    case " ${BENCH_KEEP_WORKLOADS:-} " in   # issue 13: what SSL_MODE_RELEASE_BUFFERS costs
      *" $w "*) BENCH_RELEASE_BUFFERS=0 one "$rep" "$LUA" bench/run.lua "$w" "$PKI" "$n" "$MAXS" ;;
    esac
    if [ "$w" = mem_idle ]; then   # LuaSec (2 descriptors per pair), and C with RELEASE_BUFFERS
      (ulimit -n "$(ulimit -Hn)" 2>/dev/null; one "$rep" "$LUA" bench/run.lua mem_idle_luasec "$PKI" "$n" "$MAXS") || exit 1
      BENCH_REF_RELEASE_BUFFERS=1 one "$rep" "$OUT/ref" mem_idle "$PKI" "$n" "$MAXS"
    fi
    one "$rep" "$OUT/ref" "$w" "$PKI" "$n" "$MAXS"
  done
done
echo "META load_after_wallclock=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$results"

# ---- c10k: 10,000 mutual-TLS clients, luv server against a C epoll server -----------------
if [[ " $WORKLOADS " == *" c10k "* ]]; then
  echo "== c10k (bench/c10k.sh)" >&2
  C10K_N=${C10K_N:-$(q 10000 1000)} BENCH_LUA=$LUA BENCH_OUT=$OUT bash bench/c10k.sh >&2
  grep -E '^(C10K|META c10k)' "$OUT/c10k.txt" >>"$results"
fi

# ---- callgrind: instructions per operation ----------------------------------
# Every process of a run is counted (--trace-children: the sock_* and reconnect servers too);
# per operation = (Ir(BIG) - Ir(SMALL)) / (BIG - SMALL).  Counts do not depend on the load, so
# two runs go at a time.
cg_lua=$LUA
if [ "${BENCH_CG_LUA:-}" = host ] && [ "$CALLGRIND" = 1 ]; then
  # shellcheck disable=SC2046  # pkg-config's flags are meant to split
  cc -O2 -g -o "$OUT/luahost" bench/luahost.c $(pkg-config --cflags "$LUA") -Wl,-E \
    "$(pkg-config --variable=libdir "$LUA")/lib$LUA.a" -lm -ldl
  cg_lua=$OUT/luahost
fi
cg_cmd() {   # workload impl n -> the command line
  case $2 in
    module|module_keep) echo "$cg_lua bench/run.lua $1 $PKI $3 1000" ;;
    luasec) echo "$cg_lua bench/run.lua ${1}_luasec $PKI $3 1000" ;;
    c) echo "$OUT/ref $1 $PKI $3 1000" ;;
  esac
}
cg_run() {   # prefix command...
  local prefix=$1 f
  shift
  rm -f "$prefix".*.out "$prefix".*.txt
  if ! timeout -k 5 900 valgrind --tool=callgrind --trace-children=yes \
      --callgrind-out-file="$prefix.%p.out" "$@" >"$prefix.stdout" 2>"$prefix.log"; then
    echo "bench: callgrind failed: $*" >&2
    tail -n 20 "$prefix.log" >&2
    return 1
  fi
  for f in "$prefix".*.out; do
    case $(grep -m1 '^cmd:' "$f") in *" sh -c"*|*"/sh "*) rm -f "$f"; continue ;; esac
    callgrind_annotate --auto=no --threshold=100 "$f" >"${f%.out}.self.txt" 2>/dev/null
    callgrind_annotate --auto=no --inclusive=yes --threshold=100 "$f" >"${f%.out}.inc.txt" 2>/dev/null
  done
}
cg_total() {   # prefix -> summed Ir of its processes
  local sum=0 f v
  for f in "$1".*.out; do
    v=$(grep -m1 -E '^(summary|totals):' "$f" | awk '{print $2}')
    sum=$((sum + ${v:-0}))
  done
  echo "$sum"
}
cg_files() {   # prefix suffix -> comma-joined annotate outputs
  local IFS=,
  local files=("$1".*."$2")
  echo "${files[*]}"
}

if [ "$CALLGRIND" = 1 ]; then
  command -v valgrind >/dev/null || { echo "bench: valgrind not found" >&2; exit 1; }
  cg=$OUT/cg
  mkdir -p "$cg"
  read -r cg_small cg_big <<<"$CG_N"
  for w in $CG_WORKLOADS; do
    impls="module c"
    [ "$w" = reconnect ] && impls="module luasec c"
    [ "${BENCH_CG_KEEP:-0}" = 1 ] && impls="module module_keep ${impls#module }"
    echo "== callgrind $w ($cg_small and $cg_big operations): $impls" >&2
    jobs_pids=()
    for impl in $impls; do
      for n in $cg_small $cg_big; do
        # shellcheck disable=SC2046
        BENCH_RELEASE_BUFFERS=$([ "$impl" = module_keep ] && echo 0 || echo 1) \
          cg_run "$cg/$w.$impl.$n" $(cg_cmd "$w" "$impl" "$n") &
        jobs_pids+=($!)
        if [ ${#jobs_pids[@]} -ge 2 ]; then
          for p in "${jobs_pids[@]}"; do wait "$p" || exit 1; done
          jobs_pids=()
        fi
      done
    done
    for p in "${jobs_pids[@]}"; do wait "$p" || exit 1; done
    line="CG $w small=$cg_small big=$cg_big"
    for impl in $impls; do
      line="$line $impl=$(cg_total "$cg/$w.$impl.$cg_small"),$(cg_total "$cg/$w.$impl.$cg_big")"
    done
    echo "$line" >>"$results"
    ref=c
    for kind in self.txt inc.txt; do
      top=25
      [ $kind = inc.txt ] && top=60
      out=$cg/$w.diff.txt
      [ $kind = inc.txt ] && out=$cg/$w.diff-inclusive.txt
      "$LUA" bench/cgdiff.lua $top "$cg_small" "$cg_big" \
        "$(cg_files "$cg/$w.module.$cg_small" $kind)" "$(cg_files "$cg/$w.module.$cg_big" $kind)" \
        "$(cg_files "$cg/$w.$ref.$cg_small" $kind)" "$(cg_files "$cg/$w.$ref.$cg_big" $kind)" >"$out"
    done
    sed -n 1p "$cg/$w.diff.txt" >&2
  done
fi

echo "META load_end=$(cut -d' ' -f1-3 /proc/loadavg)" >>"$results"
echo "META elapsed_s=$(( $(date +%s) - t_start ))" >>"$results"
"$LUA" bench/report.lua "$results" | tee "$OUT/report.md"
if grep -q '^POOL ' "$results"; then "$LUA" bench/reconnect_pool.lua --report "$results" | tee -a "$OUT/report.md"; fi
if [[ " $WORKLOADS " == *" c10k "* ]] && [ -f "$OUT/c10k.md" ]; then cat "$OUT/c10k.md"; fi
